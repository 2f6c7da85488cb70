"""Contributions, in three steps carried by one value: admit (who, which lease, what it claims:
cheap checks before the body is read), assess (decode the body, then the size and norm bounds
and the quality probe, holding no run lock), commit (record it under the run's locks, after
admitting it again: another hub process may have taken the lease meanwhile).

Whether a contribution counts is decided once. ``accepted`` and ``rejected`` are final when the
hub answers; on a run whose rounds check directions at the close (``aggregation.min_cosine``) an
upload that passed every other check is ``pending`` (``final`` false) until its round closes and
says. The one exception is the round itself failing to close (the hub's failure, recorded on the
run): its work is then released and its workers lease again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

from sqlalchemy.orm import Session

from tessera.api.messages import ContributionMeta, ContributionReply
from tessera.core.aggregation import staleness_weight
from tessera.core.pseudo_gradient import apply_delta
from tessera.core.tensors import TensorDict, from_bytes, global_norm, to_bytes
from tessera.core.validation import norm_verdict, probe_verdict, size_verdict
from tessera.data.mixture import PRIVATE
from tessera.errors import ClaimOutOfBounds, LeaseError
from tessera.hub import queries
from tessera.hub.auth import Principal
from tessera.hub.context import HubContext
from tessera.hub.leases import refuse_caught
from tessera.hub.rounds import count_arrivals
from tessera.hub.runs import Runs, participant
from tessera.hub.runtime import RunRuntime
from tessera.hub.tables import Contribution, Lease, PoolMember, Run, Version, Worker
from tessera.hub.verify import Verifier
from tessera.hub.views import contribution_reply


@dataclass(frozen=True)
class Candidate:
    """An upload as it goes through the steps: admitted (its lease and base version known), then
    assessed (``blob_sha``: the stored decoded float32 tensors as checked, which are what the
    round aggregates; ``reason``: why validation rejects it, or None). ``history``: the norms of
    the contributions counted since the round before its lease's, which the norm bound compares
    it with (read as it is admitted)."""

    run_id: str
    meta: ContributionMeta
    base: Version
    wire_bytes: int
    history: tuple[float, ...] = ()
    norm: float = 0.0
    reason: str | None = None
    blob_sha: str | None = None


class Contributions:
    def __init__(self, hub: HubContext, runs: Runs, verifier: Verifier) -> None:
        self.hub, self.runs, self.verifier = hub, runs, verifier

    def upload_limit(self, run_id: str) -> int:
        return self.hub.runtimes.get(run_id).upload_limit()

    def submit(self, run_id: str, who: Principal, meta: ContributionMeta, body: bytes) -> ContributionReply:
        """Admit, assess, commit; nothing is stored unless it is committed."""
        try:
            with self.hub.state.reading() as s:
                run = participant(s, run_id, who)  # held: the session keeps a row only while it is used
                admitted = self._admit(s, run, who, meta, len(body))
        except ClaimOutOfBounds as exc:  # an honest worker never claims beyond its lease
            self.verifier.catch(run_id, meta.worker_id, f"it claimed more than its lease allows: {exc}")
            raise
        if isinstance(admitted, ContributionReply):
            return admitted
        candidate = self._assess(admitted, body)
        with self.hub.locks.of(run_id), self.hub.state.transaction() as s:
            run = queries.run(s, run_id, lock=True)
            earlier = self._earlier(s, run_id, meta)
            if earlier is not None:  # the same upload, retried while this one was assessed
                return earlier
            lease = self._open_lease(s, run_id, meta)  # another hub process may have taken it meanwhile
            return self._commit(s, candidate, run, lease)

    def _admit(
        self, s: Session, run: Run, who: Principal, meta: ContributionMeta, wire_bytes: int
    ) -> Candidate | ContributionReply:
        """The earlier reply for a retried upload, or the candidate after checking its worker, its
        lease and its claims (LeaseError, ClaimOutOfBounds), with the norms its check compares."""
        run_id = run.id
        worker = queries.worker(s, run_id, meta.worker_id, who)
        refuse_caught(worker)
        earlier = self._earlier(s, run_id, meta)
        if earlier is not None:
            return earlier
        lease = self._open_lease(s, run_id, meta)
        self._check_claims(lease, worker, meta)
        base = queries.version_by_id(s, lease.version_id)  # written with the round the lease is on
        settings = self.hub.runtimes.get(run_id).recipe.validation
        norms = queries.recent_norms(s, run_id, run.current_round - 1) if settings.norm_bound else ()
        return Candidate(run_id, meta, base, wire_bytes, history=tuple(norms))

    @staticmethod
    def _earlier(s: Session, run_id: str, meta: ContributionMeta) -> ContributionReply | None:
        """The reply to this upload if it was recorded already (LeaseError if its id is another
        worker's)."""
        done = queries.contribution(s, run_id, meta.contribution_id)
        if done is not None and done.worker_id != meta.worker_id:
            raise LeaseError(f"contribution id {meta.contribution_id} is taken; choose a new one")
        return None if done is None else contribution_reply(done, duplicate=True)

    def _open_lease(self, s: Session, run_id: str, meta: ContributionMeta) -> Lease:
        """The upload's lease, as the database holds it now (each caller's session is new, so it
        is read from the database): this run's and worker's, open, not expired (LeaseError
        otherwise)."""
        lease = s.get(Lease, meta.lease_id)
        if lease is None or lease.run_id != run_id or lease.worker_id != meta.worker_id:
            raise LeaseError(f"lease {meta.lease_id} is unknown for this run and worker; lease again")
        if lease.state != "open":
            raise LeaseError(f"lease {meta.lease_id} was already used; lease again")
        if lease.deadline <= self.hub.clock():
            raise LeaseError(f"lease {meta.lease_id} expired; lease again for the current version")
        return lease

    def _check_claims(self, lease: Lease, worker: Worker, meta: ContributionMeta) -> None:
        """ClaimOutOfBounds unless steps, tokens and compute time fit the lease: steps at most its H
        (2H with overlapped rounds: steps made while the lease travelled count too), tokens at most
        steps x batch size x targets per example x the worker's ranks, compute time at most the
        lease's duration."""
        runtime = self.hub.runtimes.get(lease.run_id)
        recipe = runtime.recipe
        max_steps = lease.inner_steps * (2 if recipe.communication.overlap else 1)
        if meta.steps > max_steps:
            raise ClaimOutOfBounds(
                f"the contribution claims {meta.steps} inner steps; its lease allows at most {max_steps}"
            )
        per_example = runtime.targets_per_example
        most = meta.steps * recipe.train.batch_size * per_example * worker.ranks
        if meta.tokens > most:
            raise ClaimOutOfBounds(
                f"the contribution claims {meta.tokens} tokens; {meta.steps} steps of batch "
                f"{recipe.train.batch_size} x {per_example} targets per example x {worker.ranks} ranks "
                f"train on at most {most}"
            )
        duration = lease.deadline - lease.issued_at
        if meta.compute_s > duration:
            raise ClaimOutOfBounds(
                f"the contribution claims {meta.compute_s:.0f} s of compute; "
                f"its lease lasted {duration:.0f} s"
            )

    def _assess(self, candidate: Candidate, body: bytes) -> Candidate:
        """Decode the body (MalformedContribution), then the size bound, norm bound and quality
        probe (tessera.core.validation). An accepted upload's tensors are stored now, outside any
        run lock (content-addressed: a blob no contribution names is never read)."""
        runtime = self.hub.runtimes.get(candidate.run_id)
        tensors = runtime.decode(from_bytes(body), candidate.meta.codec)
        settings = runtime.recipe.validation
        norm = global_norm(tensors)  # finite: float32 values squared fit a float64
        base = candidate.base

        @cache
        def params() -> TensorDict:  # the base version, read only if a check needs it
            return from_bytes(self.hub.store.get(base.blob_sha))

        size = runtime.size_of(base.id, params)
        reason = size_verdict(norm, size, settings) or norm_verdict(norm, candidate.history, settings)
        if reason is None and settings.probe:
            reason = self._probe(runtime, base, params(), tensors)
        sha = self.hub.store.put(to_bytes(tensors)) if reason is None else None
        return replace(candidate, norm=norm, reason=reason, blob_sha=sha)

    @staticmethod
    def _probe(runtime: RunRuntime, base: Version, params: TensorDict, delta: TensorDict) -> str | None:
        with runtime.lock:
            if base.id not in runtime.probe_losses:
                runtime.probe_losses[base.id] = runtime.probe_loss(params)
            share = 1.0 / runtime.recipe.run.min_quorum  # its part in an equal-weight average of the round
            candidate = runtime.probe_loss(apply_delta(params, delta, scale=share))
            return probe_verdict(runtime.probe_losses[base.id], candidate, runtime.recipe.validation)

    def _commit(self, s: Session, c: Candidate, run: Run, lease: Lease) -> ContributionReply:
        """Record the contribution in the run's current round, or in the next while the current
        one closes (the caller holds the run's locks): rejected if the run has finished, if it is
        too stale, or if validation said so."""
        recipe = self.hub.runtimes.get(c.run_id).recipe
        lease.state = "used"
        record = None if run.status == "finished" else queries.round_(s, c.run_id, run.current_round)
        closing = record is not None and record.closing_at is not None  # fixed: this one counts in the next
        number = run.current_round + 1 if closing else run.current_round
        staleness = number - lease.round
        meta = c.meta
        contribution = Contribution(
            id=meta.contribution_id,
            run_id=c.run_id,
            worker_id=meta.worker_id,
            lease_id=lease.id,
            round=number,
            base_version_number=lease.round,
            nbytes=c.wire_bytes,
            tokens=meta.tokens,
            steps=meta.steps,
            compute_s=meta.compute_s,
            train_loss=meta.train_loss,
            norm=c.norm,
            created_at=self.hub.clock(),
            weight=0.0,
            status="rejected",
            blob_sha=None,
            reason=None,
        )
        if run.status == "finished" or number >= recipe.run.rounds:
            contribution.reason = (
                "the run has finished (or its last round is closing); nothing more is needed"
            )
        elif staleness > recipe.run.max_staleness:
            contribution.reason = (
                f"stale: based on version {lease.round}, {staleness} versions behind the current "
                f"{number} (max_staleness {recipe.run.max_staleness}); lease again"
            )
        elif c.reason is not None:
            contribution.reason = c.reason
        else:
            contribution.status = "accepted" if recipe.aggregation.min_cosine is None else "pending"
            contribution.weight = meta.tokens * staleness_weight(staleness, recipe.run.staleness_decay)
            contribution.blob_sha = c.blob_sha
            private = (lease.shard or "").endswith(f"-{PRIVATE}")  # a dataset run: the hub knows
            contribution.own_data = private if recipe.data.datasets else meta.own_data
            worker = s.get(Worker, meta.worker_id)
            assert worker is not None  # admitted: the caller's worker in this run
            self.verifier.select(s, run, worker, contribution)
        s.add(contribution)
        note_step_time(s, meta, contribution.created_at)
        if record is not None and not closing:  # else the next round counts it when it opens
            count_arrivals(record, [contribution])
        return contribution_reply(contribution)


def note_step_time(s: Session, meta: ContributionMeta, now: float) -> None:
    """A pool worker was seen now, and its seconds per inner step, from its claims (bounded at
    admission), averaged with what it showed before: the pool sizes its leases to its windows by
    it."""
    worker = s.get(Worker, meta.worker_id)
    member = s.get(PoolMember, worker.member_id) if worker and worker.member_id else None
    if member is None:
        return
    member.last_seen_at = max(member.last_seen_at, now)
    if meta.compute_s <= 0:
        return
    step_s = meta.compute_s / meta.steps
    member.step_s = step_s if member.step_s is None else (member.step_s + step_s) / 2
