"""Closing rounds: when a round is due (quorum, or its deadline with work in it), its counted
contributions are aggregated, the outer optimizer steps, the new version is evaluated, and it is
committed (``tessera.hub.versions``) with the ledger's credits.

Failures are state: a round that cannot close (a lost blob, a version that would not be finite,
a recipe this hub no longer trusts) is recorded on its run (``error`` in its status, ``failures``
and ``error`` on the round); the round's contributions are rejected with that reason and their
workers lease again, so the run goes on, and so do the other runs and the deadline ticker. A
database error is recorded too, but the round keeps its contributions and closes on a later try.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tessera.core.aggregation import WeightedMean
from tessera.core.codecs import Published, codec, publish
from tessera.core.robust import Aggregate, AggregationSettings, aggregate
from tessera.core.tensors import TensorDict, from_bytes, to_bytes
from tessera.hub import queries
from tessera.hub.context import HubContext
from tessera.hub.ledger import credit_compute
from tessera.hub.modules import frozen_versions
from tessera.hub.runtime import RunRuntime
from tessera.hub.state import Contribution, Lease, RoundRecord, Run
from tessera.hub.versions import NewVersion, commit_version

log = logging.getLogger(__name__)
RESIDUAL = "download_residual."  # prefix of the download codec's residual in the outer-state blob


class Rounds:
    def __init__(self, hub: HubContext) -> None:
        self.hub = hub
        self._failures: dict[str, str] = {}  # run id -> the last failure logged

    def close_due(self) -> int:
        """Close every round past its deadline that has at least one contribution."""
        with self.hub.state.transaction() as s:
            run_ids = queries.runs_with_rounds(s)
        return sum(self.close_if_due(run_id) for run_id in run_ids)

    def close_if_due(self, run_id: str) -> bool:
        """Close the run's round if it is due. Never raises: a failure is recorded on the run (and,
        if the close itself failed, the round starts again without its contributions)."""
        try:
            with self.hub.state.transaction() as s:
                run = queries.run(s, run_id)
                due = run.status == "active" and self._due(run, queries.round_(s, run_id, run.current_round))
        except Exception as exc:  # e.g. a stored recipe this hub no longer trusts
            self._note_failure(run_id, exc, restart_round=False)
            return False
        if not due:
            return False
        try:
            finished = self._close_if_due(run_id)
        except DBAPIError as exc:  # the database (locked, a deadlock): the close is tried again
            self._note_failure(run_id, exc, restart_round=False)
            return False
        except Exception as exc:  # a failure is state: recorded, and the hub goes on
            self._note_failure(run_id, exc, restart_round=True)
            return False
        self._failures.pop(run_id, None)
        if finished:
            self.hub.runtimes.drop(run_id)  # a finished run's model leaves memory
        self.hub.rounds_closed.notify()
        return finished is not None

    def _due(self, run: Run, record: RoundRecord) -> str | None:
        """Why the open round closes now ("quorum" or "deadline"), or None."""
        settings = self.hub.runtimes.recipe_of(run).run
        if record.accepted >= settings.quorum:
            return "quorum"
        if record.accepted > 0 and self.hub.clock() - record.started_at >= settings.round_deadline_s:
            return "deadline"
        return None

    def _close_if_due(self, run_id: str) -> bool | None:
        """Close the round under the run's locks if it is still due: None if not, else whether the
        run finished with it."""
        with self.hub.locks.of(run_id), self.hub.state.transaction() as s:
            run = queries.run(s, run_id, lock=True)
            if run.status != "active":
                return None
            record = queries.round_(s, run_id, run.current_round)
            reason = self._due(run, record)
            if reason is None:
                return None
            self._close(s, run, record, reason)
            return run.status == "finished"

    def _note_failure(self, run_id: str, exc: Exception, restart_round: bool) -> None:
        """Record ``exc`` on the run (logged once per distinct failure); with ``restart_round``, the
        round's contributions are rejected with the reason and their workers lease again."""
        message = f"{type(exc).__name__}: {exc}"
        if self._failures.get(run_id) == message and not restart_round:
            return
        if self._failures.get(run_id) != message:
            log.error("run %s: %s", run_id, message, exc_info=exc)
        self._failures[run_id] = message
        try:
            with self.hub.locks.of(run_id), self.hub.state.transaction() as s:
                run = queries.run(s, run_id, lock=True)
                if restart_round and run.status == "active":
                    self._restart(s, run, message)
                run.error = (
                    f"round {run.current_round} could not close: {message}" if restart_round else message
                )
                run.error_at = self.hub.clock()
        except Exception:  # the database itself failed; the next attempt records it
            log.exception("run %s: recording a failure failed", run_id)

    def _restart(self, s: Session, run: Run, message: str) -> None:
        """The open round again from the start, without the contributions it could not use."""
        record = queries.round_(s, run.id, run.current_round)
        contributions = queries.counted(s, run.id, record.number)
        for c in contributions:
            c.status, c.weight = "rejected", 0.0
            c.reason = f"the round could not close ({message}); this work was not used: lease again"
            lease = s.get(Lease, c.lease_id)
            if lease is not None:
                lease.state = "void"
        record.rejected += len(contributions)
        record.accepted, record.tokens = 0, 0
        record.failures += 1
        record.error, record.started_at = message, self.hub.clock()

    def _close(self, s: Session, run: Run, record: RoundRecord, reason: str) -> None:
        runtime = self.hub.runtimes.get(run.id)
        contributions = queries.counted(s, run.id, record.number)
        combined = self._aggregate(contributions, runtime.recipe.aggregation)
        record.clipped = combined.clipped
        contributions = decide(record, contributions, combined.dropped)
        base = queries.version(s, run.id, record.number)
        params = from_bytes(self.hub.store.get(base.blob_sha))
        self.hub.runtimes.load_frozen(runtime, frozen_versions(s, run, runtime.recipe) or [])
        stored = from_bytes(self.hub.store.get(run.outer_state_sha)) if run.outer_state_sha else {}
        outer_state, residual = split_state(stored)
        new_params, new_state = runtime.outer.step(params, combined.delta, outer_state)
        published = self._publish(runtime, params, new_params, residual)
        val_loss = runtime.evaluate(published.tensors)
        require_finite(published.tensors, val_loss)
        now = self.hub.clock()
        new = NewVersion(
            to_bytes(published.tensors), val_loss, to_bytes(published.change), [c.id for c in contributions]
        )
        version = commit_version(s, self.hub.store, run, base, new, reason, now, runtime.recipe.run.rounds)
        run.error, run.error_at = None, None
        credit_compute(s, run.id, version.id, contributions, runtime.flops_per_token, now)
        state = join_state(new_state, published.residual)
        run.outer_state_sha = self.hub.store.put(to_bytes(state)) if state else None
        record.train_loss = sum(c.train_loss * c.tokens for c in contributions) / sum(
            c.tokens for c in contributions
        )
        log.info(
            "run %s: round %d closed on %s with %d contributions, held-out loss %.4f",
            run.id,
            record.number,
            reason,
            len(contributions),
            val_loss,
        )

    @staticmethod
    def _publish(runtime: RunRuntime, old: TensorDict, new: TensorDict, residual: TensorDict) -> Published:
        """The version workers can rebuild from the one before plus the change in the download codec."""
        settings = runtime.recipe.communication
        return publish(old, new, codec(settings.download_codec), residual or None, settings.error_feedback)

    def _aggregate(self, contributions: Sequence[Contribution], settings: AggregationSettings) -> Aggregate:
        """The round's combined pseudo-gradient; plain means stream from disk, one at a time."""
        blobs = [(c.blob_sha, c.weight) for c in contributions if c.blob_sha is not None]
        if settings.streaming:
            mean = WeightedMean()
            for sha, weight in blobs:
                mean.add(from_bytes(self.hub.store.get(sha)), weight)
            return Aggregate(mean.result(), clipped=0)
        return aggregate([(from_bytes(self.hub.store.get(sha)), w) for sha, w in blobs], settings)


def decide(
    record: RoundRecord, contributions: Sequence[Contribution], dropped: dict[int, float]
) -> list[Contribution]:
    """The round's final word on its contributions: those the direction check dropped are
    rejected with their cosine, the rest accepted; returns the accepted ones."""
    for i, c in enumerate(contributions):
        if i not in dropped:
            c.status = "accepted"
            continue
        c.status, c.weight = "rejected", 0.0
        c.reason = (
            f"direction: cosine {dropped[i]:.3f} with the round's median update, below the run's min_cosine"
        )
        record.accepted -= 1
        record.rejected += 1
        record.tokens -= c.tokens
    return [c for i, c in enumerate(contributions) if i not in dropped]


def require_finite(tensors: TensorDict, val_loss: float) -> None:
    """ValueError unless a new version and its held-out loss are finite (else the round fails)."""
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()), None)
    if bad is not None or not math.isfinite(val_loss):
        raise ValueError(
            f"the round's aggregated update gives a version that is not finite (tensor {bad}, held-out "
            f"loss {val_loss}); its contributions are not used"
        )


def split_state(stored: TensorDict) -> tuple[TensorDict, TensorDict]:
    """(outer optimizer state, download residual) from the run's state blob."""
    outer = {k: v for k, v in stored.items() if not k.startswith(RESIDUAL)}
    residual = {k.removeprefix(RESIDUAL): v for k, v in stored.items() if k.startswith(RESIDUAL)}
    return outer, residual


def join_state(outer: TensorDict, residual: TensorDict) -> TensorDict:
    return {**outer, **{RESIDUAL + k: v for k, v in residual.items()}}
