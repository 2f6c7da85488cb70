"""Run and round logic of the hub: leases, contributions, round closing, metrics.

The HTTP layer translates requests into calls on ``HubService``; everything that decides
whether work counts happens here, at one commit point per request.

Failures are state: a round that cannot close (a lost blob, a version that would not be finite,
a recipe this hub no longer trusts) is recorded on its run (``error`` in its status, ``failures``
and ``error`` on the round); the round's contributions are rejected with that reason and their
workers lease again, so the run goes on, and so do the other runs and the deadline ticker. A
database error is recorded too, but the round keeps its contributions and closes on a later try.
"""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tessera.api.messages import (
    ContributionInfo,
    ContributionMeta,
    ContributionReply,
    CreateRunReply,
    LeaseGrant,
    LeaseReply,
    RegisterReply,
    RoundMetrics,
    RunStatus,
    VersionInfo,
)
from tessera.blobs import BlobStore
from tessera.core.aggregation import WeightedMean, staleness_weight
from tessera.core.codecs import Published, codec, publish
from tessera.core.modules import assign, training_order
from tessera.core.pseudo_gradient import apply_delta
from tessera.core.robust import Aggregate, AggregationSettings, aggregate
from tessera.core.tensors import TensorDict, from_bytes, global_norm, to_bytes
from tessera.core.validation import norm_verdict, probe_verdict, size_verdict
from tessera.errors import ClaimOutOfBounds, ConfigError, Forbidden, LeaseError, NotFound, QuotaExceeded
from tessera.hub.auth import Principal, may_read, require_participant, require_reader
from tessera.hub.config import HubConfig
from tessera.hub.ledger import Ledger, credit_compute
from tessera.hub.merges import Merges
from tessera.hub.modules import check_module, frozen_versions, modules_of
from tessera.hub.providers import ProviderService
from tessera.hub.runtime import RunRuntime
from tessera.hub.signal import RoundSignal
from tessera.hub.state import (
    Contribution,
    Lease,
    Provider,
    RoundRecord,
    Run,
    State,
    Version,
    Worker,
    new_round,
    new_run,
)
from tessera.hub.views import (
    contribution_info,
    contribution_reply,
    frozen_module,
    round_metrics,
    version_info,
)
from tessera.recipe import Recipe, parse_recipe
from tessera.task import build_model, load_data, model_bytes, model_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """What validation measured of a well-formed contribution; a reason means rejection."""

    norm: float
    reason: str | None


@dataclass(frozen=True)
class Upload:
    """An accepted upload: the decoded float32 tensors as checked (safetensors, what the round
    aggregates), and the bytes that travelled."""

    blob: bytes
    wire_bytes: int


WAIT_RETRY_S = 1.0
MAX_SQL_INT = 2**63 - 1
CACHED_RECIPES = 1024


def new_id() -> str:
    return uuid.uuid4().hex


def lease_seed(run_seed: int, worker_index: int, round_number: int) -> int:
    """Data-sampling seed of a lease: reproducible from the recipe, distinct per worker and round."""
    digest = hashlib.sha256(f"{run_seed}:{worker_index}:{round_number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class HubService:
    """The hub's runs, leases, contributions and rounds, on ``state`` and ``store``.

    Keeps nothing that matters in memory: runtimes (models, held-out data) and parsed recipes are
    caches rebuilt from the database; ``config`` says what code and data the hub trusts and the
    limits it holds providers to. One process-wide lock serializes changes within this process;
    a run's row lock serializes them across processes sharing one database.
    """

    def __init__(
        self,
        state: State,
        store: BlobStore,
        clock: Callable[[], float] = time.time,
        config: HubConfig | None = None,
    ) -> None:
        self.state = state
        self.store = store
        self.clock = clock
        self.config = config or HubConfig()
        self.trust, self.limits = self.config.trust, self.config.limits
        self._lock = threading.RLock()
        self.rounds_closed = RoundSignal()
        self._runtimes: OrderedDict[str, RunRuntime] = OrderedDict()
        self._recipes: OrderedDict[str, Recipe] = OrderedDict()
        self._failures: dict[str, str] = {}  # run id -> the last failure logged
        self.providers = ProviderService(state, clock)
        self.ledger = Ledger(state)
        self.merges = Merges(self)

    # --- runs -------------------------------------------------------------------------

    def create_run(self, who: Principal, recipe_text: str) -> CreateRunReply:
        """A run with version 0 of its model; a modular run gets one child run per module,
        each with version 0 of that module's tensors (its own versions, rounds and lineage)."""
        recipe = parse_recipe(recipe_text)
        collective_id = self._collective_id(recipe.run.collective, who)
        with self.state.transaction() as s:
            self._check_run_quota(s, who, 0)  # before any factory is called
        size = self._model_size(recipe)
        with self.state.transaction() as s:
            self._check_run_quota(s, who, size)
        modules = self._module_runtimes(recipe)
        runtime = None if modules else RunRuntime.build(recipe, trust=self.trust)
        run_id, now = new_id(), self.clock()
        with self._lock, self.state.transaction() as s:
            self._check_run_quota(s, who, size)  # again, as it commits
            run = new_run(run_id, recipe.run.name, recipe_text, who.provider_id, collective_id, now)
            run.model_bytes = size
            s.add(run)
            s.flush()  # the run row first: versions and rounds refer to it
            if runtime is not None:
                self._start(s, run, runtime)
            for name, module_runtime in modules.items():
                child = new_run(
                    new_id(), f"{recipe.run.name}/{name}", recipe_text, who.provider_id, collective_id, now
                )
                child.parent_id, child.module = run_id, name
                s.add(child)
                s.flush()
                self._start(s, child, module_runtime)
        log.info(
            "created run %s (%s)%s", run_id, recipe.run.name, f", modules {list(modules)}" if modules else ""
        )
        return CreateRunReply(run_id=run_id)

    def _model_size(self, recipe: Recipe) -> int:
        """Bytes of the models the run makes the hub hold (a modular run: one per module, as each
        module trains it), measured on the meta device after the trust and option checks;
        ConfigError beyond the hub's ``max_model_bytes``."""
        recipes = [recipe, *(recipe.for_module(name) for name in recipe.modules)]
        size = sum(model_bytes(r, self.trust) for r in recipes)
        if size > self.limits.max_model_bytes:
            raise ConfigError(
                f"the run's models have {size / 2**20:.0f} MiB of parameters and buffers; this hub takes "
                f"runs of at most {self.limits.max_model_bytes / 2**20:.0f} MiB (limits.max_model_bytes)"
            )
        return size

    def _check_run_quota(self, s: Session, who: Principal, size: int) -> None:
        """QuotaExceeded when ``who`` (not an admin) owns the most active runs, or models, allowed."""
        if who.is_admin:
            return
        active = (Run.owner_id == who.provider_id, Run.status == "active", Run.parent_id.is_(None))
        count, total = s.execute(
            select(func.count(), func.coalesce(func.sum(Run.model_bytes), 0)).where(*active)
        ).one()
        if count >= self.limits.max_active_runs:
            raise QuotaExceeded(
                f"{who.name} owns {count} active runs, the most this hub allows a provider "
                "(limits.max_active_runs); wait until one finishes"
            )
        if total + size > self.limits.max_provider_model_bytes:
            raise QuotaExceeded(
                f"{who.name}'s active runs hold {total / 2**20:.0f} MiB of models; with this one "
                f"{(total + size) / 2**20:.0f} MiB, more than the "
                f"{self.limits.max_provider_model_bytes / 2**20:.0f} MiB this hub allows a provider "
                "(limits.max_provider_model_bytes)"
            )

    def _start(self, s: Session, run: Run, runtime: RunRuntime) -> None:
        """Version 0 and the open round 0 of a run or module; version 0 is evaluated now unless
        the module depends on others (then once they have finished)."""
        blob = to_bytes(runtime.initial)
        waits = runtime.module is not None and bool(runtime.recipe.modules[runtime.module].depends)
        version = Version(
            id=new_id(),
            run_id=run.id,
            number=0,
            blob_sha=self.store.put(blob),
            nbytes=len(blob),
            parent_id=None,
            contributions=[],
            val_loss=None if waits else runtime.evaluate(runtime.initial),
            created_at=run.created_at,
        )
        s.add(version)
        s.add(new_round(run.id, 0, version.id, run.created_at))
        self._keep(run.id, runtime)

    def _module_runtimes(self, recipe: Recipe) -> dict[str, RunRuntime]:
        """One runtime per module, dependencies first, after checking the module map (ConfigError)."""
        if not recipe.modules:
            return {}
        whole = model_tensors(build_model(recipe, self.trust))
        assign(recipe.modules, whole)  # every tensor in exactly one module, no module empty
        data = load_data(recipe, trust=self.trust)
        runtimes = {
            name: RunRuntime.build(recipe, name, data, self.trust) for name in training_order(recipe.modules)
        }
        for name, runtime in runtimes.items():
            check_module(name, runtime, whole)
            owner = recipe.modules[name].owner
            if owner is not None:
                try:
                    self.providers.find(owner)
                except NotFound as exc:
                    raise ConfigError(
                        f"modules.{name}.owner: no provider named {owner!r} on this hub"
                    ) from exc
        return runtimes

    def runtime(self, run_id: str) -> RunRuntime:
        """The run's model, held-out data and checks, built from its recipe on first use and kept
        for the ``limits.cached_runtimes`` runs used last."""
        with self._lock:
            if run_id not in self._runtimes:
                with self.state.transaction() as s:
                    module = self._run(s, run_id).module
                recipe = self.whole_recipe(run_id)
                if recipe.modules and module is None:
                    raise ConfigError(
                        f"run {run_id} is modular: work on one of its modules "
                        f"({', '.join(recipe.modules)}); `tessera worker --module` picks one"
                    )
                runtime = RunRuntime.build(recipe, module, trust=self.trust)
                with self.state.transaction() as s:  # a module evaluates on top of its dependencies
                    self.load_frozen(runtime, frozen_versions(s, self._run(s, run_id), runtime.recipe) or [])
                self._keep(run_id, runtime)
            self._runtimes.move_to_end(run_id)
            return self._runtimes[run_id]

    def _keep(self, run_id: str, runtime: RunRuntime) -> None:
        """Cache ``runtime``, dropping the least recently used beyond ``limits.cached_runtimes``."""
        with self._lock:
            self._runtimes[run_id] = runtime
            while len(self._runtimes) > self.limits.cached_runtimes:
                self._runtimes.popitem(last=False)

    def cached_runs(self) -> list[str]:
        """Runs whose runtime (model, held-out data) this process holds, least recently used first."""
        with self._lock:
            return list(self._runtimes)

    def whole_recipe(self, run_id: str) -> Recipe:
        """The run's recipe as stored (a module's: its modular run's), parsed once and cached."""
        with self._lock:
            if run_id not in self._recipes:
                with self.state.transaction() as s:
                    text = self._run(s, run_id).recipe
                self._recipes[run_id] = parse_recipe(text)
                while len(self._recipes) > CACHED_RECIPES:
                    self._recipes.popitem(last=False)
            return self._recipes[run_id]

    def recipe_of(self, run: Run) -> Recipe:
        """The recipe as the run trains: a module's own rounds, quorum and H applied."""
        recipe = self.whole_recipe(run.id)
        return recipe.for_module(run.module) if run.module else recipe

    def _collective_id(self, name: str | None, who: Principal) -> str | None:
        """The id of the recipe's collective; a run is attached to a collective only by one of its
        members (or the collective itself, or a hub admin)."""
        if name is None:
            return None
        collective_id = self.providers.find(name)
        with self.state.transaction() as s:
            provider = s.get(Provider, collective_id)
            if provider is None or provider.kind != "collective":
                raise ConfigError(f"run.collective {name!r} is not a collective on this hub")
        if not (who.is_admin or collective_id in who.collectives or collective_id == who.provider_id):
            raise Forbidden(
                f"{who.name} is not a member of the collective {name}: only its members attach runs to it"
            )
        return collective_id

    def authorize(self, run_id: str, who: Principal) -> None:
        """403 unless ``who`` may work on the run (see tessera.hub.auth)."""
        with self.state.transaction() as s:
            run = self._run(s, run_id)
            require_participant(who, run_id, run.owner_id, run.collective_id)

    def authorize_read(self, run_id: str, who: Principal) -> None:
        """403 unless ``who`` may read the run's status, metrics, versions and blobs."""
        with self.state.transaction() as s:
            run = self._run(s, run_id)
            require_reader(who, run_id, run.owner_id, run.collective_id)

    # --- workers and leases ------------------------------------------------------------

    def register(
        self, run_id: str, who: Principal, name: str, module: str | None = None, ranks: int = 1
    ) -> RegisterReply:
        """A new worker of the run; on a modular run, of ``module`` (or of the module with the
        fewest workers among those ``who`` may train). ``ranks``: the torchrun ranks it trains with."""
        self.authorize(run_id, who)
        if ranks > self.limits.max_ranks:
            raise QuotaExceeded(
                f"a worker of {ranks} ranks; this hub takes at most {self.limits.max_ranks} "
                "(limits.max_ranks)"
            )
        with self.state.transaction() as s:
            run = self._run(s, run_id)
            family = modules_of(s, run)
            if family:
                run = self._module_to_join(family, who, module)
            elif module is not None:
                raise ConfigError(f"run {run_id} has no modules; leave out --module")
            target, module = run.id, run.module
        spec = self.runtime(target).recipe.modules.get(module or "")
        if spec is not None and not self._may_train(who, spec.owner):
            raise Forbidden(f"module {module} trains only on {spec.owner}'s nodes (its data stays there)")
        shards = self.runtime(target).shards
        with self._lock, self.state.transaction() as s:
            run = self._run(s, target, lock=True)
            self._check_worker_quota(s, target, who, ranks)
            index = run.workers_registered
            shard = shards[index % len(shards)]
            run.workers_registered += 1
            worker = Worker(
                id=new_id(),
                run_id=target,
                provider_id=who.provider_id,
                name=name,
                index=index,
                shard=shard,
                ranks=ranks,
                registered_at=self.clock(),
                last_seen_at=self.clock(),
            )
            s.add(worker)
        log.info("run %s: worker %s (%s) registered, shard %s", target, worker.id, name, shard)
        return RegisterReply(worker_id=worker.id, shard=shard, run_id=target, module=module)

    def _check_worker_quota(self, s: Session, run_id: str, who: Principal, ranks: int) -> None:
        """QuotaExceeded when ``who`` (not an admin) would have more than ``max_workers`` in the run,
        counting a torchrun worker once per rank (its claims may count every rank's tokens)."""
        if who.is_admin:
            return
        mine = (Worker.run_id == run_id, Worker.provider_id == who.provider_id)
        count = s.scalar(select(func.coalesce(func.sum(Worker.ranks), 0)).where(*mine)) or 0
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
        recipe = self.whole_recipe(next(iter(family.values())).id)
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
        owner_id = self.providers.find(owner)
        return who.provider_id == owner_id or owner_id in who.collectives

    def lease(self, run_id: str, who: Principal, worker_id: str, wait_s: float = 0.0) -> LeaseReply:
        """A lease on the current round; if the worker already contributed, wait up to ``wait_s``
        seconds in this thread (in-process callers; over HTTP the wait holds no thread)."""
        give_up = time.monotonic() + wait_s
        while True:
            since = self.rounds_closed.generation
            reply = self.try_lease(run_id, who, worker_id)
            remaining = give_up - time.monotonic()
            if reply.status != "wait" or remaining <= 0:
                return reply
            self.rounds_closed.wait(since, remaining)

    def try_lease(self, run_id: str, who: Principal, worker_id: str) -> LeaseReply:
        """A lease on the current round, or ``wait`` (the worker contributed to it), or ``done``."""
        self.authorize(run_id, who)
        with self.state.transaction() as s:
            if self._run(s, run_id).status == "finished":  # no model is built to say so
                self._worker(s, run_id, worker_id, who)
                return LeaseReply(status="done")
        self.runtime(run_id)
        with self._lock:
            return self._try_lease(run_id, who, worker_id)

    def _try_lease(self, run_id: str, who: Principal, worker_id: str) -> LeaseReply:
        now = self.clock()
        with self.state.transaction() as s:
            run = self._run(s, run_id, lock=True)
            worker = self._worker(s, run_id, worker_id, who)
            worker.last_seen_at = now
            if run.status == "finished":
                return LeaseReply(status="done")
            leases = s.scalars(
                select(Lease).where(Lease.worker_id == worker_id, Lease.round == run.current_round)
            ).all()
            if any(lease.state == "used" for lease in leases):
                return LeaseReply(status="wait", retry_after_s=WAIT_RETRY_S)
            frozen = frozen_versions(s, run, self.runtime(run_id).recipe)
            if frozen is None:  # a module waits for the final versions of those it depends on
                return LeaseReply(status="wait", retry_after_s=WAIT_RETRY_S)
            if frozen and run.current_round == 0:
                self._evaluate_start(s, run, frozen)
            lease = next((le for le in leases if le.state == "open" and le.deadline > now), None)
            if lease is None:
                lease = self._new_lease(s, run, worker, now)
            version = s.get(Version, lease.version_id)
            assert version is not None  # written in the same transaction as the round
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
                    shard=worker.shard,
                    seed=lease_seed(self.runtime(run_id).recipe.seed, worker.index, lease.round),
                    module=run.module,
                    frozen=[frozen_module(name, dep, v) for name, dep, v in frozen],
                ),
            )

    def _new_lease(self, s: Session, run: Run, worker: Worker, now: float) -> Lease:
        """A lease on the current version; a planned worker (by name) gets its planned H."""
        recipe = self.runtime(run.id).recipe
        version = self._version(s, run.id, run.current_round)
        lease = Lease(
            id=new_id(),
            run_id=run.id,
            worker_id=worker.id,
            round=run.current_round,
            version_id=version.id,
            inner_steps=self._inner_steps(s, run, worker),
            issued_at=now,
            deadline=now + recipe.run.lease_timeout_s,
            state="open",
        )
        s.add(lease)
        return lease

    def _inner_steps(self, s: Session, run: Run, worker: Worker) -> int:
        """H for this worker: the plan's, if it names the worker; with ``run.balance_steps``, the
        recipe's H scaled by the fastest worker's measured step time over this worker's, so that
        fast and slow workers finish a round together (step times are claims: one under a tenth of
        the median is not believed as the fastest, and no worker gets more than the recipe's H);
        else the recipe's H."""
        recipe = self.runtime(run.id).recipe
        default = recipe.plan.steps_for(worker.name, recipe.train.inner_steps)
        if worker.name in recipe.plan.inner_steps or not recipe.run.balance_steps:
            return default
        times = self._step_times(s, run)
        if worker.id not in times:
            return default
        floor = statistics.median(times.values()) / 10
        fastest = min(t for t in times.values() if t >= floor)
        return max(
            1, min(recipe.train.inner_steps, round(recipe.train.inner_steps * fastest / times[worker.id]))
        )

    @staticmethod
    def _step_times(s: Session, run: Run) -> dict[str, float]:
        """Seconds per inner step of each worker, from its latest contribution of the last two rounds."""
        rows = s.execute(
            select(Contribution.worker_id, Contribution.compute_s, Contribution.steps)
            .where(
                Contribution.run_id == run.id,
                Contribution.round >= run.current_round - 2,
                Contribution.compute_s > 0,
            )
            .order_by(Contribution.pk)
        ).all()
        return {worker_id: compute_s / steps for worker_id, compute_s, steps in rows}

    # --- contributions -----------------------------------------------------------------

    def upload_limit(self, run_id: str) -> int:
        return self.runtime(run_id).upload_limit()

    def submit(self, run_id: str, who: Principal, meta: ContributionMeta, body: bytes) -> ContributionReply:
        """Validate, then record a contribution; nothing is stored if validation fails."""
        self.authorize(run_id, who)
        runtime = self.runtime(run_id)
        with self._lock:
            with self.state.transaction() as s:  # cheap checks before the body is parsed
                previous = self._check_submission(s, run_id, who, meta)
            if previous is not None:
                return previous
            tensors = runtime.decode(from_bytes(body), meta.codec)
            verdict = self._validate(run_id, meta, tensors)
            upload = Upload(to_bytes(tensors), len(body))  # what was checked is what is aggregated
            with self.state.transaction() as s:  # again under the run's row lock: another hub
                self._run(s, run_id, lock=True)  # process may have taken the lease meanwhile
                reply = self._check_submission(s, run_id, who, meta) or self._record(
                    s, run_id, meta, upload, verdict
                )
            if reply.status == "accepted" and not reply.duplicate:
                self._maybe_close(run_id)
            return reply

    def _check_submission(
        self, s: Session, run_id: str, who: Principal, meta: ContributionMeta
    ) -> ContributionReply | None:
        """The earlier reply for a retried upload, or None after checking worker, lease and claims."""
        worker = self._worker(s, run_id, meta.worker_id, who)
        done = s.scalar(
            select(Contribution).where(Contribution.run_id == run_id, Contribution.id == meta.contribution_id)
        )
        if done is not None and done.worker_id == meta.worker_id:
            return contribution_reply(done, duplicate=True)
        if done is not None:
            raise LeaseError(f"contribution id {meta.contribution_id} is taken; choose a new one")
        lease = s.get(Lease, meta.lease_id)
        if lease is None or lease.run_id != run_id or lease.worker_id != meta.worker_id:
            raise LeaseError(f"lease {meta.lease_id} is unknown for this run and worker; lease again")
        if lease.state != "open":
            raise LeaseError(f"lease {meta.lease_id} was already used; lease again")
        if lease.deadline <= self.clock():
            raise LeaseError(f"lease {meta.lease_id} expired; lease again for the current version")
        self._check_claims(lease, worker, meta)
        return None

    def _check_claims(self, lease: Lease, worker: Worker, meta: ContributionMeta) -> None:
        """ClaimOutOfBounds unless steps, tokens and compute time fit the lease: steps at most its H
        (2H with overlapped rounds: steps made while the lease travelled count too), tokens at most
        steps x batch size x targets per example x the worker's ranks, compute time at most the
        lease's duration."""
        runtime = self.runtime(lease.run_id)
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

    def _validate(self, run_id: str, meta: ContributionMeta, tensors: TensorDict) -> Verdict:
        """Size bound, norm bound and quality probe (tessera.core.validation); no state changes."""
        runtime = self.runtime(run_id)
        settings = runtime.recipe.validation
        norm = global_norm(tensors)
        with self.state.transaction() as s:
            run = self._run(s, run_id)
            history = s.scalars(
                select(Contribution.norm).where(
                    Contribution.run_id == run_id,
                    Contribution.status == "accepted",
                    Contribution.round >= run.current_round - 1,
                )
            ).all()
            lease = s.get(Lease, meta.lease_id)
            base = s.get(Version, lease.version_id) if lease else None
        if base is None:
            raise LeaseError(f"lease {meta.lease_id} is unknown for this run; lease again")
        params = from_bytes(self.store.get(base.blob_sha))
        reason = size_verdict(norm, runtime.size_of(base.id, params), settings)
        reason = reason or norm_verdict(norm, history, settings)
        if reason is None and settings.probe:
            reason = self._probe(runtime, base, params, tensors)
        return Verdict(norm=norm, reason=reason)  # finite: float32 values squared fit a float64

    def _probe(self, runtime: RunRuntime, base: Version, params: TensorDict, delta: TensorDict) -> str | None:
        if base.id not in runtime.probe_losses:
            runtime.probe_losses[base.id] = runtime.probe_loss(params)
        share = 1.0 / runtime.recipe.run.quorum  # its part in an equal-weight average of the round
        candidate = runtime.probe_loss(apply_delta(params, delta, scale=share))
        return probe_verdict(runtime.probe_losses[base.id], candidate, runtime.recipe.validation)

    def _record(
        self, s: Session, run_id: str, meta: ContributionMeta, upload: Upload, verdict: Verdict
    ) -> ContributionReply:
        run = self._run(s, run_id)
        recipe = self.runtime(run_id).recipe
        lease = s.get(Lease, meta.lease_id)
        assert lease is not None  # checked under the same lock
        lease.state = "used"
        staleness = run.current_round - lease.round
        record = self._round(s, run_id, run.current_round)
        contribution = Contribution(
            id=meta.contribution_id,
            run_id=run_id,
            worker_id=meta.worker_id,
            lease_id=lease.id,
            round=run.current_round,
            base_version_number=lease.round,
            nbytes=upload.wire_bytes,
            tokens=meta.tokens,
            steps=meta.steps,
            compute_s=meta.compute_s,
            train_loss=meta.train_loss,
            norm=verdict.norm,
            created_at=self.clock(),
            weight=0.0,
            status="rejected",
            blob_sha=None,
            reason=None,
        )
        if run.status == "finished":
            contribution.reason = "the run has finished; nothing more is needed"
        elif staleness > recipe.run.max_staleness:
            contribution.reason = (
                f"stale: based on version {lease.round}, {staleness} versions behind the current "
                f"{run.current_round} (max_staleness {recipe.run.max_staleness}); lease again"
            )
        elif verdict.reason is not None:
            contribution.reason = verdict.reason
        else:
            contribution.status = "accepted"
            contribution.weight = meta.tokens * staleness_weight(staleness, recipe.run.staleness_decay)
            contribution.blob_sha = self.store.put(upload.blob)
            record.accepted += 1
            record.tokens = min(record.tokens + meta.tokens, MAX_SQL_INT)  # a metric: saturates
        if contribution.status == "rejected":
            record.rejected += 1
        record.bytes_in += upload.wire_bytes
        s.add(contribution)
        return contribution_reply(contribution)

    # --- rounds ------------------------------------------------------------------------

    def close_due_rounds(self) -> int:
        """Close every round past its deadline that has at least one contribution."""
        with self.state.transaction() as s:
            parents = select(Run.parent_id).where(Run.parent_id.is_not(None))  # rounds are their modules'
            run_ids = s.scalars(select(Run.id).where(Run.status == "active", Run.id.not_in(parents))).all()
        return sum(self._maybe_close(run_id) for run_id in run_ids)

    def _maybe_close(self, run_id: str) -> bool:
        """Close the run's round if it is due. Never raises: a failure is recorded on the run (and,
        if the close itself failed, the round starts again without its contributions)."""
        try:
            with self.state.transaction() as s:
                run = self._run(s, run_id)
                due = run.status == "active" and self._due(run, self._round(s, run_id, run.current_round))
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
            with self._lock:
                self._runtimes.pop(run_id, None)  # a finished run's model leaves memory
        self.rounds_closed.notify()
        return finished is not None

    def _due(self, run: Run, record: RoundRecord) -> str | None:
        """Why the open round closes now ("quorum" or "deadline"), or None."""
        settings = self.recipe_of(run).run
        if record.accepted >= settings.quorum:
            return "quorum"
        if record.accepted > 0 and self.clock() - record.started_at >= settings.round_deadline_s:
            return "deadline"
        return None

    def _close_if_due(self, run_id: str) -> bool | None:
        """Close the round under the run's lock if it is still due: None if not, else whether the
        run finished with it."""
        with self._lock, self.state.transaction() as s:
            run = self._run(s, run_id, lock=True)
            if run.status != "active":
                return None
            record = self._round(s, run_id, run.current_round)
            reason = self._due(run, record)
            if reason is None:
                return None
            self._close_round(s, run, record, reason)
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
            with self._lock, self.state.transaction() as s:
                run = self._run(s, run_id, lock=True)
                if restart_round and run.status == "active":
                    self._restart_round(s, run, message)
                run.error = (
                    f"round {run.current_round} could not close: {message}" if restart_round else message
                )
                run.error_at = self.clock()
        except Exception:  # the database itself failed; the next attempt records it
            log.exception("run %s: recording a failure failed", run_id)

    def _restart_round(self, s: Session, run: Run, message: str) -> None:
        """The open round again from the start, without the contributions it could not use."""
        record = self._round(s, run.id, run.current_round)
        contributions = self._accepted(s, run.id, record.number)
        for c in contributions:
            c.status, c.weight = "rejected", 0.0
            c.reason = f"the round could not close ({message}); this work was not used: lease again"
            lease = s.get(Lease, c.lease_id)
            if lease is not None:
                lease.state = "void"
        record.rejected += len(contributions)
        record.accepted, record.tokens = 0, 0
        record.failures += 1
        record.error, record.started_at = message, self.clock()

    def _close_round(self, s: Session, run: Run, record: RoundRecord, reason: str) -> None:
        runtime = self.runtime(run.id)
        contributions = self._accepted(s, run.id, record.number)
        combined = self._aggregate(contributions, runtime.recipe.aggregation)
        record.clipped = combined.clipped
        contributions = self._drop_misaligned(record, contributions, combined.dropped)
        base = self._version(s, run.id, record.number)
        params = from_bytes(self.store.get(base.blob_sha))
        self.load_frozen(runtime, frozen_versions(s, run, runtime.recipe) or [])
        stored = from_bytes(self.store.get(run.outer_state_sha)) if run.outer_state_sha else {}
        outer_state, residual = split_state(stored)
        new_params, new_state = runtime.outer.step(params, combined.delta, outer_state)
        published = self._publish(runtime, params, new_params, residual)
        val_loss = runtime.evaluate(published.tensors)
        require_finite(published.tensors, val_loss)
        blob, change = to_bytes(published.tensors), to_bytes(published.change)
        now = self.clock()
        version = Version(
            id=new_id(),
            run_id=run.id,
            number=record.number + 1,
            blob_sha=self.store.put(blob),
            nbytes=len(blob),
            change_sha=self.store.put(change),
            change_nbytes=len(change),
            parent_id=base.id,
            contributions=[c.id for c in contributions],
            val_loss=val_loss,
            created_at=now,
        )
        s.add(version)
        s.flush()
        run.error, run.error_at = None, None
        credit_compute(s, run.id, version.id, contributions, runtime.flops_per_token, now)
        state = join_state(new_state, published.residual)
        run.outer_state_sha = self.store.put(to_bytes(state)) if state else None
        record.closed_at, record.close_reason, record.version_id = now, reason, version.id
        record.val_loss = version.val_loss
        record.train_loss = sum(c.train_loss * c.tokens for c in contributions) / sum(
            c.tokens for c in contributions
        )
        run.current_round = record.number + 1
        if run.current_round >= runtime.recipe.run.rounds:
            run.status, run.finished_at = "finished", now
            self.finish_parent(s, run, now)
        else:
            s.add(new_round(run.id, run.current_round, version.id, now))
        log.info(
            "run %s: round %d closed on %s with %d contributions, held-out loss %.4f",
            run.id,
            record.number,
            reason,
            len(contributions),
            version.val_loss,
        )

    def _evaluate_start(self, s: Session, run: Run, frozen: list[tuple[str, Run, Version]]) -> None:
        """Version 0 of a module that depends on others is evaluated once they have finished,
        on their final versions (the model it will train in)."""
        first = self._version(s, run.id, 0)
        if first.val_loss is None:
            runtime = self.runtime(run.id)
            self.load_frozen(runtime, frozen)
            first.val_loss = runtime.evaluate(runtime.initial)

    def load_frozen(self, runtime: RunRuntime, frozen: list[tuple[str, Run, Version]]) -> None:
        """The versions a module trains on, loaded once into its runtime (for evaluation)."""
        ids = tuple(v.id for _, _, v in frozen)
        if runtime.frozen_ids != ids:
            runtime.frozen = {
                k: t for _, _, v in frozen for k, t in from_bytes(self.store.get(v.blob_sha)).items()
            }
            runtime.frozen_ids = ids

    def finish_parent(self, s: Session, module: Run, now: float) -> None:
        """A modular run finishes with the last of its modules."""
        if module.parent_id is None:
            return
        parent = self._run(s, module.parent_id, lock=True)
        if all(r.status == "finished" for r in modules_of(s, parent).values()):
            parent.status, parent.finished_at = "finished", now

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
                mean.add(from_bytes(self.store.get(sha)), weight)
            return Aggregate(mean.result(), clipped=0)
        return aggregate([(from_bytes(self.store.get(sha)), w) for sha, w in blobs], settings)

    @staticmethod
    def _drop_misaligned(
        record: RoundRecord, contributions: Sequence[Contribution], dropped: dict[int, float]
    ) -> list[Contribution]:
        """Mark contributions the direction check dropped as rejected; return the rest."""
        for i, cos in dropped.items():
            c = contributions[i]
            c.status, c.weight = "rejected", 0.0
            c.reason = (
                f"direction: cosine {cos:.3f} with the round's median update, below the run's min_cosine"
            )
            record.accepted -= 1
            record.rejected += 1
            record.tokens -= c.tokens
        return [c for i, c in enumerate(contributions) if i not in dropped]

    # --- reading -----------------------------------------------------------------------

    def contributions(
        self, run_id: str, who: Principal, round_number: int | None = None
    ) -> list[ContributionInfo]:
        """Contributions of a run (or one round), with status and the reason of rejections."""
        self.authorize_read(run_id, who)
        with self.state.transaction() as s:
            self._run(s, run_id)
            query = select(Contribution).where(Contribution.run_id == run_id)
            if round_number is not None:
                query = query.where(Contribution.round == round_number)
            return [contribution_info(c) for c in s.scalars(query.order_by(Contribution.pk))]

    def download(self, run_id: str, who: Principal, sha: str) -> bytes:
        """A version's blob or its change from the parent; its size counts as bytes out of the round."""
        self.authorize_read(run_id, who)
        with self._lock, self.state.transaction() as s:
            run = self._run(s, run_id)
            owned = s.scalar(
                select(func.count())
                .select_from(Version)
                .where(Version.run_id == run_id, or_(Version.blob_sha == sha, Version.change_sha == sha))
            )
            if not owned:
                raise NotFound(f"blob {sha} is not a version (or version change) of run {run_id}")
            data = self.store.get(sha)
            if run.status == "active":  # an atomic increment: no lock, no lost update
                s.execute(
                    update(RoundRecord)
                    .where(RoundRecord.run_id == run_id, RoundRecord.number == run.current_round)
                    .values(bytes_out=RoundRecord.bytes_out + len(data))
                )
        return data

    def status(self, run_id: str, who: Principal) -> RunStatus:
        """A run's progress; a modular run's is its modules' (``modules``) added up."""
        self.authorize_read(run_id, who)
        with self.state.transaction() as s:
            run = self._run(s, run_id)
            family = modules_of(s, run)
            if not family:
                return self._status(s, run)
            modules = [self._status(s, m) for m in family.values()]
            return RunStatus(
                run_id=run.id,
                name=run.name,
                status=run.status,  # type: ignore[arg-type]
                error=next((m.error for m in modules if m.error), None),
                error_at=next((m.error_at for m in modules if m.error), None),
                rounds_total=sum(m.rounds_total for m in modules),
                rounds_done=sum(m.rounds_done for m in modules),
                current_round=0,
                latest_version=None,
                initial_val_loss=None,
                workers=sum(m.workers for m in modules),
                recipe=run.recipe,
                modules=modules,
            )

    def _status(self, s: Session, run: Run) -> RunStatus:
        latest = s.scalar(
            select(Version).where(Version.run_id == run.id).order_by(Version.number.desc()).limit(1)
        )
        first = self._version(s, run.id, 0)
        workers = s.scalar(select(func.count()).select_from(Worker).where(Worker.run_id == run.id))
        assert latest is not None  # version 0 is written with the run
        return RunStatus(
            run_id=run.id,
            name=run.name,
            status=run.status,  # type: ignore[arg-type]
            error=run.error,
            error_at=run.error_at,
            rounds_total=self._rounds_total(run),
            rounds_done=latest.number,
            current_round=run.current_round,
            latest_version=version_info(latest),
            initial_val_loss=first.val_loss,
            workers=workers or 0,
            recipe=run.recipe,
            module=run.module,
            parent_id=run.parent_id,
        )

    def _rounds_total(self, run: Run) -> int:
        try:
            return self.recipe_of(run).run.rounds
        except ConfigError:  # a recipe stored before this hub checked recipes as it does now
            return run.current_round

    def rounds(self, run_id: str, who: Principal) -> list[RoundMetrics]:
        self.authorize_read(run_id, who)
        with self.state.transaction() as s:
            self._run(s, run_id)
            records = s.scalars(
                select(RoundRecord).where(RoundRecord.run_id == run_id).order_by(RoundRecord.number)
            ).all()
            return [round_metrics(r) for r in records]

    def version(self, run_id: str, who: Principal, number: int | None = None) -> VersionInfo:
        self.authorize_read(run_id, who)
        with self.state.transaction() as s:
            run = self._run(s, run_id)
            return version_info(self._version(s, run_id, run.current_round if number is None else number))

    def run_ids(self, who: Principal) -> list[str]:
        """The runs ``who`` may see, oldest first."""
        with self.state.transaction() as s:
            runs = s.scalars(select(Run).where(Run.parent_id.is_(None)).order_by(Run.created_at)).all()
            return [r.id for r in runs if may_read(who, r.owner_id, r.collective_id)]

    # --- lookups -----------------------------------------------------------------------

    @staticmethod
    def _run(s: Session, run_id: str, lock: bool = False) -> Run:
        """The run; ``lock`` takes its row lock (SELECT ... FOR UPDATE) until the transaction ends,
        which serializes changes to one run across hub processes sharing a database."""
        run = s.get(Run, run_id, with_for_update=lock, populate_existing=lock)
        if run is None:
            raise NotFound(f"run {run_id} not found; `tessera status` lists the runs of a hub")
        return run

    @staticmethod
    def _worker(s: Session, run_id: str, worker_id: str, who: Principal) -> Worker:
        worker = s.get(Worker, worker_id)
        if worker is None or worker.run_id != run_id:
            raise NotFound(f"worker {worker_id} is not registered in run {run_id}; register first")
        if worker.provider_id != who.provider_id:
            raise Forbidden(f"worker {worker_id} belongs to another provider; register your own")
        return worker

    @staticmethod
    def _version(s: Session, run_id: str, number: int) -> Version:
        version = s.scalar(select(Version).where(Version.run_id == run_id, Version.number == number))
        if version is None:
            raise NotFound(f"run {run_id} has no version {number}")
        return version

    @staticmethod
    def _accepted(s: Session, run_id: str, number: int) -> Sequence[Contribution]:
        """The contributions counted in round ``number`` so far."""
        return s.scalars(
            select(Contribution).where(
                Contribution.run_id == run_id, Contribution.round == number, Contribution.status == "accepted"
            )
        ).all()

    @staticmethod
    def _round(s: Session, run_id: str, number: int) -> RoundRecord:
        record = s.scalar(
            select(RoundRecord).where(RoundRecord.run_id == run_id, RoundRecord.number == number)
        )
        if record is None:
            raise NotFound(f"run {run_id} has no round {number}")
        return record


RESIDUAL = "download_residual."  # prefix of the download codec's residual in the outer-state blob


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
