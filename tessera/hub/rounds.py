"""Closing rounds: when a round is due (quorum, or its deadline with work in it), its counted
contributions are fixed, the new version is computed from them (``tessera.hub.outer_step``), and
it is committed (``tessera.hub.versions``) with the ledger's credits.

Membership is elastic: a fractional ``run.quorum`` is that part of the round's active workers
(``quorum_of``), so a run keeps its pace as workers come and go. With ``run.deadline_k`` the
deadline adapts too: once ``ADAPT_AFTER_ROUNDS`` rounds have closed, it is median + k x MAD of
the arrival times of the last ``ADAPT_WINDOW`` closed rounds (``adaptive_deadline_s``), so one
straggler does not stretch it; never above ``run.round_deadline_s`` nor below ``MIN_DEADLINE_S``.

Failures are state: a round that cannot close (a lost blob, a version that would not be finite,
a recipe this hub no longer trusts) is recorded on its run (``error`` in its status, ``failures``
and ``error`` on the round); the round's contributions are rejected with that reason and their
workers lease again, so the run goes on, and so do the other runs and the deadline ticker. A
database error is recorded too, but the round keeps its contributions and closes on a later try.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tessera.hub import queries
from tessera.hub.context import HubContext
from tessera.hub.ledger import credit_compute
from tessera.hub.outer_step import Computed, compute
from tessera.hub.tables import Contribution, Lease, RoundRecord, Run
from tessera.hub.versions import commit_version
from tessera.recipe import Recipe, RunSettings

log = logging.getLogger(__name__)
MAX_SQL_INT = 2**63 - 1
ADAPT_AFTER_ROUNDS = 3  # closed rounds before the deadline adapts (with run.deadline_k)
ADAPT_WINDOW = 5  # the closed rounds whose arrival times it reads
MIN_DEADLINE_S = 1.0  # an adaptive deadline's floor: the deadline ticker's period (tessera.hub.app)


@dataclass(frozen=True)
class Closing:
    """A round whose close has begun: what it aggregates, fixed as it began (``began_at`` is the
    round's ``closing_at``, which marks the close as this one's)."""

    run_id: str
    number: int
    reason: str
    began_at: float
    contributions: tuple[str, ...]  # ids, in the order aggregated
    blobs: tuple[tuple[str, float], ...]  # (sha256, weight) of each
    base_sha: str
    outer_state_sha: str | None


class Rounds:
    """Closes rounds in three steps: begin (under the run's locks: the round is marked closing and
    its contributions fixed; uploads from now on count in the next round), compute (no run lock:
    aggregation, outer step, evaluation), finish (under the run's locks again: the version is
    committed and the next round opens, with the work that arrived meanwhile)."""

    def __init__(self, hub: HubContext) -> None:
        self.hub = hub
        self._failures: dict[str, str] = {}  # run id -> the last failure logged
        self._deadlines: dict[str, tuple[int, float]] = {}  # run id -> (round, s from its start)

    def close_due(self) -> int:
        """Close every round past its deadline that has at least one contribution."""
        with self.hub.state.reading() as s:
            run_ids = queries.runs_with_rounds(s)
        return sum(self.close_if_due(run_id) for run_id in run_ids)

    def close_if_due(self, run_id: str) -> bool:
        """Close the run's round if it is due (and the next, if the work that arrived while it
        closed makes that due too); whether one closed. Never raises: a failure is recorded on the
        run (and, if the close itself failed, the round starts again without its contributions)."""
        closed = False
        while True:
            try:
                closing = self._begin(run_id)
            except Exception as exc:  # the database, or a stored recipe this hub no longer trusts
                self._note_failure(run_id, exc, None)
                return closed
            if closing is None:
                return closed
            try:
                computed = compute(self.hub, run_id, closing.blobs, closing.base_sha, closing.outer_state_sha)
                finished = self._finish(closing, computed)
            except Exception as exc:  # a failure is state: recorded, and the hub goes on
                self._note_failure(run_id, exc, closing)
                return closed
            self._failures.pop(run_id, None)
            self.hub.rounds_closed.notify()
            closed = closed or finished is not None
            if finished:
                self.hub.runtimes.drop(run_id)  # a finished run's model leaves memory
                self._deadlines.pop(run_id, None)
                return closed

    def _due(self, s: Session, run: Run, record: RoundRecord) -> str | None:
        """Why the open round closes now ("quorum" or "deadline"), or None (also while it is
        closing, unless that close has taken longer than ``limits.close_timeout_s``). A round
        without work is never due, and costs no lookup."""
        now = self.hub.clock()
        if record.closing_at is not None and now - record.closing_at < self.hub.config.limits.close_timeout_s:
            return None
        recipe = self.hub.runtimes.recipe_of(run)
        settings = recipe.run
        if record.accepted == 0:
            return None
        if record.accepted >= self._quorum(s, run.id, record, settings):
            return "quorum"
        if now - record.started_at >= self._deadline_s(s, run.id, record.number, recipe):
            return "deadline"
        return None

    def _quorum(self, s: Session, run_id: str, record: RoundRecord, settings: RunSettings) -> int:
        """The round's quorum (``quorum_of``), counted on each call: the active workers change
        both ways within a round (in-flight leases are used, new ones issued)."""
        return quorum_of(s, run_id, record.number, settings, self.hub.clock())

    def _deadline_s(self, s: Session, run_id: str, number: int, recipe: Recipe) -> float:
        """Seconds from round ``number``'s start to its deadline: ``run.round_deadline_s``, or,
        with ``run.deadline_k`` once ``ADAPT_AFTER_ROUNDS`` rounds have closed (rounds close in
        order: those before the open one), ``adaptive_deadline_s`` of the last ``ADAPT_WINDOW``
        closed rounds' arrivals (of whole leases: of the round's H where a window bounds them),
        read once per round (closed rounds do not change). Where the sync schedule gave those
        rounds another H than this one's, their arrivals say nothing of it: the fixed deadline."""
        settings, schedule = recipe.run, recipe.schedule
        full_steps = schedule.steps(number)
        window = range(max(0, number - ADAPT_WINDOW), number)
        same_h = all(schedule.steps(r) == full_steps for r in window)
        if settings.deadline_k <= 0 or number < ADAPT_AFTER_ROUNDS or not same_h:
            return settings.round_deadline_s
        cached = self._deadlines.get(run_id)
        if cached is not None and cached[0] == number:
            return cached[1]
        arrivals = queries.arrival_times(s, run_id, number - ADAPT_WINDOW, number, full_steps)
        deadline = adaptive_deadline_s(arrivals, settings.deadline_k, settings.round_deadline_s)
        log.debug("run %s: round %d's deadline is %.1f s from its start", run_id, number, deadline)
        self._deadlines[run_id] = (number, deadline)
        return deadline

    def _begin(self, run_id: str) -> Closing | None:
        """Mark the run's round closing, if it is due, and fix what it aggregates."""
        with self.hub.state.reading() as s:  # most calls end here, taking no lock
            run = queries.run(s, run_id)
            if run.status != "active":
                return None
            if self._due(s, run, queries.round_(s, run_id, run.current_round)) is None:
                return None
        with self.hub.locks.of(run_id), self.hub.state.transaction() as s:
            run = queries.run(s, run_id, lock=True)
            if run.status != "active":
                return None
            record = queries.round_(s, run_id, run.current_round)
            reason = self._due(s, run, record)
            if reason is None:
                return None
            record.closing_at = self.hub.clock()
            counted = queries.counted(s, run_id, record.number)
            return Closing(
                run_id=run_id,
                number=record.number,
                reason=reason,
                began_at=record.closing_at,
                contributions=tuple(c.id for c in counted),
                blobs=tuple((c.blob_sha, c.weight) for c in counted if c.blob_sha is not None),
                base_sha=queries.version(s, run_id, record.number).blob_sha,
                outer_state_sha=run.outer_state_sha,
            )

    def _finish(self, closing: Closing, computed: Computed) -> bool | None:
        """Commit the version (unless another process closed the round meanwhile: None), credit
        its contributions, and open the next round with what arrived while this one closed;
        whether the run finished."""
        run_id = closing.run_id
        with self.hub.locks.of(run_id), self.hub.state.transaction() as s:
            run = queries.run(s, run_id, lock=True)
            record = queries.round_(s, run_id, closing.number)
            if run.current_round != closing.number or record.closing_at != closing.began_at:
                log.warning("run %s: round %d was closed elsewhere meanwhile", run_id, closing.number)
                return None
            runtime = self.hub.runtimes.get(run_id)
            rows = {c.id: c for c in queries.counted(s, run_id, closing.number)}
            contributions = decide(record, [rows[i] for i in closing.contributions], computed.dropped)
            record.clipped, record.closing_at = computed.clipped, None
            now = self.hub.clock()
            new = replace(computed.new, contributions=[c.id for c in contributions])
            base = queries.version(s, run_id, closing.number)
            rounds = runtime.recipe.run.rounds
            version = commit_version(s, self.hub.store, run, base, new, closing.reason, now, rounds)
            run.error, run.error_at = None, None
            credit_compute(s, run.id, version.id, contributions, runtime.flops_per_token, now)
            run.outer_state_sha = self.hub.store.put(computed.outer_state) if computed.outer_state else None
            record.train_loss = sum(c.train_loss * c.tokens for c in contributions) / sum(
                c.tokens for c in contributions
            )
            if run.status == "active":
                s.flush()
                count_arrivals(
                    queries.round_(s, run_id, run.current_round),
                    queries.contributions(s, run_id, run.current_round),
                )
        log.info(
            "run %s: round %d closed on %s with %d contributions, held-out loss %.4f",
            run_id,
            closing.number,
            closing.reason,
            len(contributions),
            computed.val_loss,
        )
        return run.status == "finished"

    def _note_failure(self, run_id: str, exc: Exception, closing: Closing | None) -> None:
        """Record ``exc`` on the run (logged once per distinct failure). A close that began
        (``closing``) and failed on the database is undone, to be tried again; one that failed
        otherwise restarts the round: its contributions are rejected with the reason and their
        workers lease again."""
        restart_round = closing is not None and not isinstance(exc, DBAPIError)
        message = f"{type(exc).__name__}: {exc}"
        if self._failures.get(run_id) == message and closing is None:
            return
        if self._failures.get(run_id) != message:
            log.error("run %s: %s", run_id, message, exc_info=exc)
        self._failures[run_id] = message
        try:
            with self.hub.locks.of(run_id), self.hub.state.transaction() as s:
                run = queries.run(s, run_id, lock=True)
                record = queries.round_(s, run_id, run.current_round)
                ours = closing is not None and record.closing_at == closing.began_at
                if ours:
                    record.closing_at = None
                if restart_round and ours and run.status == "active":
                    self._restart(s, run, record, message)
                run.error = (
                    f"round {run.current_round} could not close: {message}" if restart_round else message
                )
                run.error_at = self.hub.clock()
        except Exception:  # the database itself failed; the next attempt records it
            log.exception("run %s: recording a failure failed", run_id)

    def _restart(self, s: Session, run: Run, record: RoundRecord, message: str) -> None:
        """The open round again from the start, without the contributions it could not use; work
        that arrived while it tried to close (recorded for the next round) counts in it."""
        contributions = queries.counted(s, run.id, record.number)
        for c in contributions:
            c.status, c.weight = "rejected", 0.0
            c.reason = f"the round could not close ({message}); this work was not used: lease again"
            lease = s.get(Lease, c.lease_id)
            if lease is not None:
                lease.state = "void"
        arrived = queries.contributions(s, run.id, record.number + 1)
        for c in arrived:
            c.round = record.number
            if c.status != "rejected":
                c.weight = float(c.tokens)  # based on this round's version: not stale after all
        record.rejected += len(contributions)
        record.accepted, record.tokens = 0, 0
        count_arrivals(record, arrived)
        record.failures += 1
        record.error, record.started_at = message, self.hub.clock()


def quorum_of(s: Session, run_id: str, number: int, settings: RunSettings, now: float) -> int:
    """The accepted contributions that close round ``number``: the run's integer quorum, or its
    fraction of the round's active workers (``queries.active_workers``), rounded up, at least 1."""
    if not settings.elastic:
        return settings.min_quorum
    return settings.quorum_for(queries.active_workers(s, run_id, number, now))


def adaptive_deadline_s(arrivals: Sequence[float], k: float, most_s: float) -> float:
    """median + k x MAD of ``arrivals`` (MAD: the median absolute deviation from the median, not
    scaled; about 0.67 sigma for normal arrivals), at least ``MIN_DEADLINE_S`` and at most
    ``most_s`` (also the answer without arrivals). A straggler moves the median and the MAD by
    one rank at most, however late it is."""
    if not arrivals:
        return most_s
    median = statistics.median(arrivals)
    mad = statistics.median(abs(a - median) for a in arrivals)
    return min(most_s, max(MIN_DEADLINE_S, median + k * mad))


def count_arrivals(record: RoundRecord, arrived: Sequence[Contribution]) -> None:
    """Add to a round's counters the contributions recorded for it while the round before closed."""
    for c in arrived:
        if c.status == "rejected":
            record.rejected += 1
        else:
            record.accepted += 1
            record.tokens = min(record.tokens + c.tokens, MAX_SQL_INT)
        record.bytes_in += c.nbytes


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
