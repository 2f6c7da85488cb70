"""Workers and leases: registering a worker (on a modular run, on one of its modules), and the
lease on a run's current round that tells a worker what to train: the version, its H, its shard
and data seed, and the frozen modules under it.

A worker gets one lease per round: asked again, it gets the same open lease back (a restarted
worker resumes), a new one if that expired, or ``wait`` once it has contributed to the round.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import time

from sqlalchemy.orm import Session

from tessera.api.messages import LeaseGrant, LeaseReply, RegisterReply
from tessera.core.inner import MAX_INNER_STEPS
from tessera.errors import ConfigError, Forbidden, NotFound, QuotaExceeded
from tessera.hub import mixing, queries
from tessera.hub.auth import Principal
from tessera.hub.context import HubContext
from tessera.hub.modules import frozen_versions, modules_of
from tessera.hub.pool import WindowLimit, reopens_in, window_limit
from tessera.hub.runs import Runs, participant
from tessera.hub.runtime import RunRuntime
from tessera.hub.tables import Dataset, Lease, PoolMember, Run, RunDataset, Version, Worker, new_id
from tessera.hub.views import frozen_module

log = logging.getLogger(__name__)
WAIT_RETRY_S = 1.0
PAUSED_RETRY_S = 30.0
LAST_SEEN_EVERY_S = 10.0  # how fresh a worker's last_seen_at is kept


def lease_seed(run_seed: int, worker_index: int, round_number: int) -> int:
    """Data-sampling seed of a lease: reproducible from the recipe, distinct per worker and round."""
    digest = hashlib.sha256(f"{run_seed}:{worker_index}:{round_number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class Leases:
    def __init__(self, hub: HubContext, runs: Runs) -> None:
        self.hub, self.runs = hub, runs
        self.limits, self.pool = hub.config.limits, hub.config.pool

    def register(
        self,
        run_id: str,
        who: Principal,
        name: str,
        module: str | None = None,
        ranks: int = 1,
        member_id: str | None = None,
        held_datasets: list[str] | None = None,
    ) -> RegisterReply:
        """A new worker of the run; on a modular run, of ``module`` (or of the module with the
        fewest workers among those ``who`` may train). ``ranks``: the torchrun ranks it trains with;
        ``member_id``: the pool worker of ``who``'s it is (its leases follow the pool's windows
        and pledges); ``held_datasets``: the run's private dataset versions of ``who``'s that
        the worker holds."""
        target, module = self._target(run_id, who, module)
        if ranks > self.limits.max_ranks:
            raise QuotaExceeded(
                f"a worker of {ranks} ranks; this hub takes at most {self.limits.max_ranks} "
                "(limits.max_ranks)"
            )
        runtime = self.hub.runtimes.get(target)
        spec = runtime.recipe.modules.get(module or "")
        if spec is not None and not self._may_train(who, spec.owner):
            raise Forbidden(f"module {module} trains only on {spec.owner}'s nodes (its data stays there)")
        now = self.hub.clock()
        with self.hub.locks.of(target), self.hub.state.transaction() as s:
            run = participant(s, target, who, lock=True)
            self._check_worker_quota(s, target, who, ranks)
            if member_id is not None:
                member = s.get(PoolMember, member_id)
                if member is None or member.provider_id != who.provider_id:
                    raise NotFound(f"no pool worker {member_id} of yours; join the pool again")
            check_held(s, run.parent_id or run.id, who, held_datasets or [])
            index = run.workers_registered
            run.workers_registered += 1
            worker = Worker(
                id=new_id(),
                run_id=target,
                provider_id=who.provider_id,
                name=name,
                index=index,
                shard=runtime.shards[index % len(runtime.shards)],
                ranks=ranks,
                member_id=member_id,
                held_datasets=list(held_datasets or []),
                verified=0,
                registered_at=now,
                last_seen_at=now,
            )
            s.add(worker)
        log.info("run %s: worker %s (%s) registered, shard %s", target, worker.id, name, worker.shard)
        return RegisterReply(worker_id=worker.id, shard=worker.shard, run_id=target, module=module)

    def _target(self, run_id: str, who: Principal, module: str | None) -> tuple[str, str | None]:
        """The run a new worker joins, and its module: the run itself, or on a modular run one of
        its modules (403 unless ``who`` may work on the run)."""
        with self.hub.state.reading() as s:
            run = participant(s, run_id, who)
            family = modules_of(s, run) if self.hub.runtimes.whole_recipe(run_id).modules else {}
        if family:
            joined = self._module_to_join(family, who, module)
            return joined.id, joined.module
        if module is not None:
            raise ConfigError(f"run {run_id} has no modules; leave out --module")
        return run.id, run.module

    def _check_worker_quota(self, s: Session, run_id: str, who: Principal, ranks: int) -> None:
        """QuotaExceeded when ``who`` (not an admin) would have more than ``max_workers`` in the run,
        counting a torchrun worker once per rank (its claims may count every rank's tokens)."""
        if who.is_admin:
            return
        count = queries.provider_ranks(s, run_id, who.provider_id)
        if count + ranks > self.limits.max_workers:
            raise QuotaExceeded(
                f"{who.name} has registered {count} workers (ranks) in run {run_id}; with {ranks} more, "
                f"more than this hub allows a provider (limits.max_workers); a restarted worker resumes "
                "with its --state-dir instead"
            )

    def _module_to_join(self, family: dict[str, Run], who: Principal, module: str | None) -> Run:
        if module is not None:
            if module not in family:
                raise NotFound(f"no module {module!r} in this run; its modules: {', '.join(family)}")
            return family[module]
        recipe = self.hub.runtimes.whole_recipe(next(iter(family.values())).id)
        open_ = [
            r
            for name, r in family.items()
            if r.status == "active" and self._may_train(who, recipe.modules[name].owner)
        ]
        if not open_:
            raise Forbidden("no module of this run is open to your nodes; the run may have finished")
        return min(open_, key=lambda r: r.workers_registered)

    def _may_train(self, who: Principal, owner: str | None) -> bool:
        """A module with an owner trains only on the owner's nodes or its collective's members'."""
        if owner is None:
            return True
        owner_id = self.hub.providers.find(owner)
        return who.provider_id == owner_id or owner_id in who.collectives

    def lease(self, run_id: str, who: Principal, worker_id: str, wait_s: float = 0.0) -> LeaseReply:
        """A lease on the current round; if the worker already contributed, wait up to ``wait_s``
        seconds in this thread (in-process callers; over HTTP the wait holds no thread)."""
        give_up = time.monotonic() + wait_s
        while True:
            since = self.hub.rounds_closed.generation
            reply = self.try_lease(run_id, who, worker_id)
            remaining = give_up - time.monotonic()
            if reply.status != "wait" or remaining <= 0:
                return reply
            self.hub.rounds_closed.wait(since, remaining)

    def try_lease(self, run_id: str, who: Principal, worker_id: str) -> LeaseReply:
        """A lease on the current round, or ``wait`` (the worker contributed to it), or ``done``.
        One transaction, once this process holds the run's runtime (a finished run's is dropped:
        a lookup says ``done`` without building it again)."""
        if not self.hub.runtimes.holds(run_id):
            with self.hub.state.reading() as s:
                if participant(s, run_id, who).status == "finished":
                    queries.worker(s, run_id, worker_id, who)
                    return LeaseReply(status="done")
        runtime = self.hub.runtimes.get(run_id)  # a trust or recipe error is told at the first lease
        first_loss = self._first_loss(run_id, runtime)
        with self.hub.locks.of(run_id), self.hub.state.transaction() as s:
            run = participant(s, run_id, who, lock=True)
            worker = queries.worker(s, run_id, worker_id, who)
            refuse_caught(worker)
            now = self.hub.clock()
            if now - worker.last_seen_at >= LAST_SEEN_EVERY_S:  # a polling worker writes nothing
                worker.last_seen_at = now
                if (pooled := member_of(s, worker)) is not None:
                    pooled.last_seen_at = now
            if run.status == "finished":
                return LeaseReply(status="done")
            if self._paused(s, run):
                return LeaseReply(status="wait", retry_after_s=PAUSED_RETRY_S)
            frozen = frozen_versions(s, run, runtime.recipe)
            leases = queries.worker_leases(s, worker_id, run.current_round)
            if frozen is None or any(lease.state == "used" for lease in leases):
                return LeaseReply(status="wait", retry_after_s=WAIT_RETRY_S)
            if first_loss is not None:
                first = queries.version(s, run_id, 0)
                first.val_loss = first.val_loss if first.val_loss is not None else first_loss
            lease = next((le for le in leases if le.state == "open" and le.deadline > now), None)
            if lease is None and queries.round_(s, run_id, run.current_round).closing_at is not None:
                return LeaseReply(status="wait", retry_after_s=WAIT_RETRY_S)  # its next version is coming
            if lease is None:
                member = member_of(s, worker)
                if member is not None:
                    member.last_seen_at = now  # a new lease: alive for its length at least
                limit = (
                    window_limit(member, now, self.pool.window_margin_s)
                    if member
                    else WindowLimit(None, None)
                )
                if limit is None:  # outside the pool worker's windows: back to the pool until they open
                    assert member is not None
                    return LeaseReply(status="wait", retry_after_s=reopens_in(member, now, PAUSED_RETRY_S))
                version = queries.version(s, run_id, run.current_round)
                lease = self._new_lease(s, run, worker, version, now, (member, limit))
            else:  # the worker's open lease again
                version = queries.version_by_id(s, lease.version_id)
            return LeaseReply(
                status="work",
                lease=LeaseGrant(
                    lease_id=lease.id,
                    round=lease.round,
                    version_id=version.id,
                    version_number=version.number,
                    blob_sha256=version.blob_sha,
                    nbytes=version.nbytes,
                    change_sha256=version.change_sha,
                    change_nbytes=version.change_nbytes,
                    inner_steps=lease.inner_steps,
                    deadline=lease.deadline,
                    shard=lease.shard or worker.shard,
                    dataset_id=lease.dataset_id,
                    seed=lease_seed(runtime.recipe.seed, worker.index, lease.round),
                    module=run.module,
                    frozen=[frozen_module(name, dep, v) for name, dep, v in frozen],
                    stop_at=lease.stop_at,
                ),
            )

    def _first_loss(self, run_id: str, runtime: RunRuntime) -> float | None:
        """A module's version 0 held-out loss, measured (outside any lock) once the modules it
        depends on have finished and while version 0 has none; None otherwise (for other runs,
        without a lookup)."""
        if runtime.module is None or not runtime.recipe.modules[runtime.module].depends:
            return None
        with self.hub.state.reading() as s:
            frozen = frozen_versions(s, queries.run(s, run_id), runtime.recipe)
            unmeasured = bool(frozen) and queries.version(s, run_id, 0).val_loss is None
        if not (frozen and unmeasured):
            return None
        with runtime.lock:
            self.hub.runtimes.load_frozen(runtime, frozen)
            return runtime.evaluate(runtime.initial)

    def _new_lease(
        self,
        s: Session,
        run: Run,
        worker: Worker,
        version: Version,
        now: float,
        pooled: tuple[PoolMember | None, WindowLimit],
    ) -> Lease:
        """A lease on the current ``version``; a planned worker (by name) gets its planned H; a
        pool worker's lease fits in its window and records the pledge it serves (``pooled``: the
        pool worker, if it is one, and what its window leaves)."""
        recipe = self.hub.runtimes.recipe_of(run)
        steps = self._inner_steps(s, run, worker)
        member, limit = pooled
        steps = steps if limit.steps is None else min(steps, limit.steps)
        dataset_id, shard = (None, None)
        if recipe.data.datasets:
            shards = self.hub.runtimes.get(run.id).shards
            dataset_id, shard = mixing.choose(s, run.parent_id or run.id, worker, shards, steps)
        lease = Lease(
            id=new_id(),
            run_id=run.id,
            worker_id=worker.id,
            round=run.current_round,
            version_id=version.id,
            inner_steps=steps,
            issued_at=now,
            deadline=now + recipe.run.lease_timeout_s,
            state="open",
            pledge_id=member.serving if member else None,
            stop_at=limit.stop_at,
            dataset_id=dataset_id,
            shard=shard,
        )
        s.add(lease)
        return lease

    @staticmethod
    def _paused(s: Session, run: Run) -> bool:
        """Whether the run (a module: its modular run) is paused by its owner."""
        if run.parent_id is None:
            return run.paused
        parent = s.get(Run, run.parent_id)
        return parent is not None and parent.paused

    def _inner_steps(self, s: Session, run: Run, worker: Worker) -> int:
        """H for this worker: the plan's, if it names the worker; with ``run.balance_steps``, the
        recipe's H scaled by the fastest worker's measured step time over this worker's, so that
        fast and slow workers finish a round together (step times are claims: one under a tenth of
        the median is not believed as the fastest, and no worker gets more than the round's H);
        else the recipe's H. The recipe's H is the round's in its sync schedule
        (``train.inner_steps_by_round``), and a planned H is scaled with it."""
        recipe = self.hub.runtimes.recipe_of(run)
        nominal = recipe.schedule.steps(run.current_round)
        if worker.name in recipe.plan.inner_steps:
            planned = recipe.plan.inner_steps[worker.name]
            return max(1, min(MAX_INNER_STEPS, round(planned * nominal / recipe.train.inner_steps)))
        if not recipe.run.balance_steps:
            return nominal
        times = queries.step_times(s, run.id, run.current_round - 2)
        if worker.id not in times:
            return nominal
        floor = statistics.median(times.values()) / 10
        fastest = min(t for t in times.values() if t >= floor)
        return max(1, min(nominal, round(nominal * fastest / times[worker.id])))


def check_held(s: Session, run_id: str, who: Principal, held: list[str]) -> None:
    """ConfigError unless each version a new worker holds is a private one of ``who``'s that the
    run trains on."""
    for dataset_id in held:
        d = s.get(Dataset, dataset_id)
        used = s.get(RunDataset, (run_id, dataset_id)) is not None
        if d is None or d.stored or d.owner_id != who.provider_id or not used:
            raise ConfigError(
                f"the worker's data is dataset version {dataset_id[:16]}, which is not a private dataset "
                f"of {who.name}'s that this run trains on; leave out --data, or register the data"
            )


def member_of(s: Session, worker: Worker) -> PoolMember | None:
    """The pool worker a run's worker is, if it is one."""
    return s.get(PoolMember, worker.member_id) if worker.member_id else None


def refuse_caught(worker: Worker) -> None:
    """Forbidden for a worker whose claims did not hold (``tessera.hub.verify``)."""
    if worker.flagged_at is not None:
        raise Forbidden(
            f"worker {worker.id} was caught ({worker.flag_reason}); its work no longer counts. "
            "Check the machine and its software, then join as a new worker"
        )
