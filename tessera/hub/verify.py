"""Checking what workers claim: the hub replays a share of the contributions itself, from the
same base version, data shard, seed and number of inner steps, and compares each with its replay.

Which are replayed: all of a worker's contributions until ``trust_after`` of them held (adaptive
replication, as BOINC does for new hosts), then a ``fraction`` of them, drawn by a keyed hash the
worker cannot predict (the key is the hub's, in its database). Modules of a modular run are not
replayed yet. Work on a worker's own data (``own_data``) cannot be replayed: it is marked
``private`` and credited by the private rule below.

The comparison: a replay cannot reproduce the worker's inner optimizer state (kept across rounds,
as in DiLoCo), so equal tensors are not expected, nor even the same direction: after an outer
step that overshot, an honest upload's momentum can point against a fresh replay (cosine -0.15
measured, under faults). What holds is that both trained on the lease's batches: the hub
measures the loss on ``GAIN_BATCHES`` of them, spread over the lease, at the base version, with
the upload applied and after its replay; the upload must take off at least ``gain_min`` of what
the replay took off (``replay_gain``: 0.33 to 1.52 for honest uploads under faults, measured;
exactly 0 for a zero update, below 0 for a random or reversed one). A replay that gains nothing
cannot tell: the contribution stays unconfirmed.

A worker whose claim fails, or whose upload claimed more than its lease allows, is caught: it is
flagged (no more leases or uploads), its contributions in rounds not yet closed are rejected, and
each credited contribution of its that no replay confirmed gets a compensating ``correction``
(the credit taken back) and a ``refund`` (the run owner's usage returned): the ledger is only
appended to. Others' work is untouched.

Private rule: work on a worker's own data is credited as claimed and builds no reputation; it is
vouched for by the worker's replayable work: when the worker is caught, its private work's
credit is taken back with the rest of its unconfirmed work.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from itertools import islice

from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.core.inner import InnerTrainer, evaluate
from tessera.core.tensors import TensorDict, from_bytes, model_float_tensors
from tessera.core.validation import replay_gain
from tessera.data.source import DataSource
from tessera.hub import queries
from tessera.hub.context import HubContext
from tessera.hub.leases import lease_seed
from tessera.hub.tables import Contribution, Lease, LedgerEntry, Meta, Run, Worker
from tessera.task import build_model

log = logging.getLogger(__name__)
CACHED_DATA = 4  # runs whose training data the verifier keeps loaded
SECRET_KEY = "verify_secret"
GAIN_BATCHES = 16  # of the lease's batches, evenly spread over it, that the losses are measured on


class Verifier:
    """Selects contributions for replay, replays them one at a time, and catches workers whose
    claims do not hold (the one place a worker is flagged and its credit taken back)."""

    def __init__(self, hub: HubContext) -> None:
        self.hub, self.settings = hub, hub.config.verify
        self._busy = threading.Lock()
        self._data: OrderedDict[str, DataSource] = OrderedDict()
        self._secret: str | None = None

    # --- selecting -----------------------------------------------------------------------

    def select(self, s: Session, run: Run, worker: Worker, c: Contribution) -> None:
        """Mark an accepted (or pending) contribution for replay, or as private."""
        if c.own_data:
            c.verified = "private"
        elif run.module is None and (worker.verified < self.settings.trust_after or self._draw(s, c.id)):
            c.verified = "pending"

    def _draw(self, s: Session, contribution_id: str) -> bool:
        digest = hashlib.sha256(f"{self._key(s)}:{contribution_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.settings.fraction

    def _key(self, s: Session) -> str:
        if self._secret is None:
            row = s.get(Meta, SECRET_KEY)
            if row is None:
                row = Meta(key=SECRET_KEY, value=secrets.token_hex(32))
                s.add(row)
            self._secret = row.value
        return self._secret

    # --- replaying -----------------------------------------------------------------------

    def verify_pending(self, limit: int = 1) -> int:
        """Replay up to ``limit`` contributions marked for it; how many were decided. One caller
        at a time in this process (another returns 0 at once)."""
        if not self._busy.acquire(blocking=False):
            return 0
        try:
            done = 0
            while done < limit and (found := self._next()) is not None:
                try:
                    gain = self._gain(found)
                except Exception as exc:  # the hub's failure, not the worker's: not replayed
                    log.exception("replaying contribution %s failed; it stays unconfirmed", found)
                    self._unreplayed(found, f"{type(exc).__name__}: {exc}")
                else:
                    self._decide(found, gain)
                done += 1
            return done
        finally:
            self._busy.release()

    def _next(self) -> str | None:
        with self.hub.state.reading() as s:
            return s.scalar(
                select(Contribution.id).where(Contribution.verified == "pending").order_by(Contribution.pk)
            )

    def _gain(self, contribution_id: str) -> float | None:
        """``replay_gain`` of the upload against the hub's replay of its lease."""
        with self.hub.state.reading() as s:
            c = s.scalars(select(Contribution).where(Contribution.id == contribution_id)).one()
            lease, worker = s.get(Lease, c.lease_id), s.get(Worker, c.worker_id)
            assert lease is not None and worker is not None and c.blob_sha is not None
            base_sha = queries.version_by_id(s, lease.version_id).blob_sha
            run_id, shard, steps, blob = c.run_id, lease.shard or worker.shard, c.steps, c.blob_sha
            place = (lease.round, lease.inner_steps)  # where the lease's steps sit in the lr schedule
            seed = lease_seed(self.hub.runtimes.get(run_id).recipe.seed, worker.index, lease.round)
        base = from_bytes(self.hub.store.get(base_sha))
        upload = from_bytes(self.hub.store.get(blob))
        applied = {**base, **{k: base[k] - upload[k] for k in upload if k in base}}
        replayed, losses = self.replay(run_id, base, shard, (steps, seed), place)
        return replay_gain(losses(base), losses(applied), losses(replayed))

    def replay(
        self, run_id: str, base: TensorDict, shard: str | None, work: tuple[int, int], place: tuple[int, int]
    ) -> tuple[TensorDict, Callable[[TensorDict], float]]:
        """The weights after ``steps`` inner steps (``work``: steps and seed) from ``base`` on the
        lease's data, at the learning rates of the lease's ``place`` in the run's schedule (its
        round and H), with a fresh optimizer, on a model of the hub's own (not the runtime's,
        which requests share), and the loss of given weights on ``GAIN_BATCHES`` of the lease's
        batches spread over it (the first ones alone can miss what a worker learned later: gain
        -0.03 on the first 16, 0.37 on all 150, for one honest lease of a run under faults)."""
        recipe = self.hub.runtimes.get(run_id).recipe
        model = build_model(recipe, self.hub.config.trust)
        model.load_state_dict(base, strict=False)
        data = self._data_of(run_id)
        trainer = InnerTrainer(model, recipe.train)
        steps, seed = work
        lr_scale = recipe.schedule.lr_scale(*place)
        trainer.train(data.train_batches(shard, recipe.train.batch_size, seed), steps, lr_scale=lr_scale)
        replayed = model_float_tensors(model)
        batches = data.train_batches(shard, recipe.train.batch_size, seed)
        spread = list(islice(islice(batches, 0, steps, max(1, steps // GAIN_BATCHES)), GAIN_BATCHES))

        def losses(weights: TensorDict) -> float:
            model.load_state_dict(weights, strict=False)
            return evaluate(model, spread, trainer.loss_fn)

        return replayed, losses

    def _data_of(self, run_id: str) -> DataSource:
        if run_id not in self._data:
            self._data[run_id] = self.hub.runtimes.load_data(self.hub.runtimes.get(run_id).recipe)
            while len(self._data) > CACHED_DATA:
                self._data.popitem(last=False)
        self._data.move_to_end(run_id)
        return self._data[run_id]

    def _unreplayed(self, contribution_id: str, problem: str) -> None:
        """A contribution the hub could not replay stays unconfirmed (not held against its worker)."""
        with self.hub.state.transaction() as s:
            c = s.scalars(select(Contribution).where(Contribution.id == contribution_id)).one()
            if c.verified == "pending":
                c.verified = None

    def _decide(self, contribution_id: str, gain: float | None) -> None:
        """Record the replay's verdict: the worker's reputation grows, or it is caught; a replay
        that could not tell (``gain`` None) leaves the contribution unconfirmed."""
        with self.hub.state.reading() as s:
            c = s.scalars(select(Contribution).where(Contribution.id == contribution_id)).one()
            run_id, worker_id = c.run_id, c.worker_id
        with self.hub.locks.of(run_id), self.hub.state.transaction() as s:
            c = s.scalars(select(Contribution).where(Contribution.id == contribution_id)).one()
            worker = s.get(Worker, worker_id)
            assert worker is not None
            if c.verified != "pending":
                return
            shown = "none (the replay gained nothing)" if gain is None else f"{gain:.2f}"
            log.info("run %s: contribution %s replayed, gain %s (at least %.2f holds)",
                     run_id, c.id, shown, self.settings.gain_min)  # fmt: skip
            if gain is None:
                c.verified = None
            elif gain >= self.settings.gain_min:
                c.verified = "passed"
                worker.verified += 1
            else:
                c.verified = "failed"
                reason = (
                    f"its upload does not match the hub's replay of its lease (it took off {gain:.0%} of"
                    f" the loss the replay took off its batches; {self.settings.gain_min:.0%} holds)"
                )
                self._catch(s, worker, reason)

    # --- catching ------------------------------------------------------------------------

    def catch(self, run_id: str, worker_id: str, reason: str) -> None:
        """Catch a worker (see the module docstring) whose claims did not hold for ``reason``."""
        with self.hub.locks.of(run_id), self.hub.state.transaction() as s:
            worker = s.get(Worker, worker_id)
            if worker is not None and worker.flagged_at is None:
                self._catch(s, worker, reason)

    def _catch(self, s: Session, worker: Worker, reason: str) -> None:
        now = self.hub.clock()
        worker.flagged_at, worker.flag_reason, worker.verified = now, reason, 0
        run = queries.run(s, worker.run_id, lock=True)
        credited = set(
            s.scalars(
                select(LedgerEntry.contribution_id).where(
                    LedgerEntry.run_id == run.id, LedgerEntry.kind == "compute"
                )
            )
        )
        for c in s.scalars(select(Contribution).where(Contribution.worker_id == worker.id)):
            if c.verified == "pending":
                c.verified = None  # no replay needed: all its unconfirmed work is taken back
            if c.id in credited:
                if c.verified != "passed":
                    take_back(s, run, worker, c, now)
            elif c.status != "rejected":
                self._drop(s, run, c, reason)
        log.warning("run %s: worker %s caught: %s", run.id, worker.id, reason)

    @staticmethod
    def _drop(s: Session, run: Run, c: Contribution, reason: str) -> None:
        """Reject a contribution of a caught worker that no round has committed yet (one being
        closed now is left to its close, which credits no caught worker)."""
        record = queries.round_(s, run.id, c.round) if c.round == run.current_round else None
        if record is not None and record.closing_at is not None:
            return
        c.status, c.weight, c.blob_sha = "rejected", 0.0, None
        c.reason = f"dropped: its worker was caught ({reason})"
        if record is not None:
            record.accepted -= 1
            record.rejected += 1
            record.tokens -= c.tokens


def take_back(s: Session, run: Run, worker: Worker, c: Contribution, now: float) -> None:
    """The compensating entries of a credited contribution: its credit taken from the worker's
    provider, the run owner's usage returned."""
    credit = s.scalars(
        select(LedgerEntry).where(
            LedgerEntry.run_id == run.id, LedgerEntry.contribution_id == c.id, LedgerEntry.kind == "compute"
        )
    ).one()
    for provider_id, kind, amount in (
        (worker.provider_id, "correction", -credit.amount),
        (run.owner_id, "refund", credit.amount),
    ):
        s.add(
            LedgerEntry(
                provider_id=provider_id,
                run_id=run.id,
                contribution_id=c.id,
                version_id=credit.version_id,
                kind=kind,
                tokens=credit.tokens,
                flops_per_token=credit.flops_per_token,
                amount=amount,
                created_at=now,
                dataset_id=credit.dataset_id,
            )
        )
