"""Runs at the hub: creating one from a recipe (version 0 and round 0 of it, or of each module
of a modular run), within the hub's limits and its owner's quotas, and who may work on or read
a run."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from tessera.api.messages import CreateRunReply
from tessera.core.modules import assign, training_order
from tessera.core.tensors import check_compatible, from_bytes, to_bytes
from tessera.data.licences import refusal
from tessera.errors import (
    ConfigError,
    Forbidden,
    MalformedContribution,
    NotFound,
    QuotaExceeded,
    TesseraError,
)
from tessera.hub import access, queries
from tessera.hub.auth import Principal, require_participant, require_reader
from tessera.hub.context import HubContext
from tessera.hub.lineage import fork_chain, named_by
from tessera.hub.modules import check_module
from tessera.hub.runtime import RunRuntime
from tessera.hub.tables import Dataset, Provider, Run, RunDataset, Version, new_id, new_round, new_run
from tessera.recipe import Recipe, parse_recipe
from tessera.task import build_model, model_bytes, model_tensors

log = logging.getLogger(__name__)


class Runs:
    def __init__(self, hub: HubContext) -> None:
        self.hub = hub
        self.limits, self.trust = hub.config.limits, hub.config.trust

    def create(self, who: Principal, recipe_text: str) -> CreateRunReply:
        """A run with version 0 of its model; a modular run gets one child run per module,
        each with version 0 of that module's tensors (its own versions, rounds and lineage).
        Quotas are checked before any factory is called, and again as the run commits."""
        recipe = parse_recipe(recipe_text)
        collective_id = self._collective_id(recipe.run.collective, who)
        self._check_datasets(who, recipe)
        with self.hub.state.transaction() as s:
            self._check_quota(s, who, 0)
        size = self._model_size(recipe)
        with self.hub.state.transaction() as s:
            self._check_quota(s, who, size)
        modules = self._module_runtimes(recipe)
        runtime = (
            None
            if modules
            else RunRuntime.build(recipe, data=self.hub.runtimes.load_data(recipe), trust=self.trust)
        )
        forked = self._fork(who, recipe, runtime) if recipe.run.fork_of else None
        if runtime is not None and forked is not None:
            runtime.initial = from_bytes(self.hub.store.get(forked.blob_sha))
        zeros = {name: version_zero(r) for name, r in [(None, runtime), *modules.items()] if r is not None}
        run_id, now = new_id(), self.hub.clock()
        with self.hub.state.transaction() as s:
            self._check_quota(s, who, size)
            run = new_run(run_id, recipe.run.name, recipe_text, who.provider_id, collective_id, now)
            run.model_bytes = size
            run.forked_from = forked.id if forked is not None else None
            s.add(run)
            s.flush()  # the run row first: versions and rounds refer to it
            for position, (dataset_id, weight) in enumerate(recipe.data.datasets.items()):
                s.add(RunDataset(run_id=run_id, dataset_id=dataset_id, weight=weight, position=position,
                                 steps_issued=0))  # fmt: skip
            if runtime is not None:
                self._start(s, run, runtime, zeros[None])
            for name, module_runtime in modules.items():
                child = new_run(
                    new_id(), f"{recipe.run.name}/{name}", recipe_text, who.provider_id, collective_id, now
                )
                child.parent_id, child.module = run_id, name
                s.add(child)
                s.flush()
                self._start(s, child, module_runtime, zeros[name])
        log.info(
            "created run %s (%s)%s", run_id, recipe.run.name, f", modules {list(modules)}" if modules else ""
        )
        return CreateRunReply(run_id=run_id)

    def _fork(self, who: Principal, recipe: Recipe, runtime: RunRuntime | None) -> Version:
        """The version a fork starts from: of a run ``who`` may read, fitting the recipe's model
        (ConfigError otherwise)."""
        if runtime is None:
            raise ConfigError("run.fork_of: a modular run cannot fork; fork one of its modules' runs")
        parent_id, number = recipe.run.fork_of or "", recipe.run.fork_version
        with self.hub.state.reading() as s:
            parent = queries.run(s, parent_id)
            require_reader(who, parent_id, parent.owner_id, parent.collective_id)
            version = queries.version(s, parent_id, number)
        tensors = from_bytes(self.hub.store.get(version.blob_sha))
        try:
            check_compatible(tensors, runtime.initial)
        except MalformedContribution as exc:
            raise ConfigError(
                f"run.fork_of: version {number} of run {parent_id} does not fit this model: {exc}"
            ) from exc
        return version

    def _check_fork_licences(self, s: Session, recipe: Recipe) -> None:
        """ConfigError if a version the fork starts from was trained on data whose licence does
        not allow the fork's declared use."""
        parent = s.get(Run, recipe.run.fork_of or "")
        if parent is None:
            return
        for run in [parent, *fork_chain(s, parent)]:
            for _, d in named_by(s, run):
                problem = refusal(d.licence, recipe.run.use)
                if problem is not None:
                    raise ConfigError(
                        f"run.fork_of: run {run.id} was trained on dataset version {d.id[:16]}: {problem}"
                    )

    def _check_datasets(self, who: Principal, recipe: Recipe) -> None:
        """The recipe's dataset versions exist, may be used by ``who`` (read, or named by id if
        private: only their owners' workers will train on them), are not withdrawn, and their
        licences allow the run's declared use (ConfigError with the reason otherwise)."""
        if recipe.run.fork_of is not None:
            with self.hub.state.reading() as s:
                self._check_fork_licences(s, recipe)
        if not recipe.data.datasets:
            return
        with self.hub.state.transaction() as s:
            for dataset_id in recipe.data.datasets:
                d = s.get(Dataset, dataset_id)
                if d is None or (d.stored and not access.decide(s, who, d).granted):
                    raise access.not_found(dataset_id)
                problem = refusal(d.licence, recipe.run.use)
                if d.withdrawn_at is not None or d.tainted_by:
                    problem = "it was withdrawn (or derives from withdrawn data)"
                if problem is not None:  # named only to those who may read it
                    label = f"{d.name} v{d.number} " if access.decide(s, who, d).granted else ""
                    raise ConfigError(f"dataset {label}({dataset_id[:16]}) cannot be used: {problem}")

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

    def _check_quota(self, s: Session, who: Principal, size: int) -> None:
        """QuotaExceeded when ``who`` (not an admin) owns the most active runs, or models, allowed."""
        if who.is_admin:
            return
        count, total = queries.active_runs_of(s, who.provider_id)
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

    def _start(self, s: Session, run: Run, runtime: RunRuntime, zero: tuple[bytes, float | None]) -> None:
        """Version 0 (its blob and held-out loss, ``zero``) and the open round 0 of a run or module."""
        blob, val_loss = zero
        version = Version(
            id=new_id(),
            run_id=run.id,
            number=0,
            blob_sha=self.hub.store.put(blob),
            nbytes=len(blob),
            parent_id=None,
            contributions=[],
            val_loss=val_loss,
            created_at=run.created_at,
        )
        s.add(version)
        s.add(new_round(run.id, 0, version.id, run.created_at))
        self.hub.runtimes.keep(run.id, runtime)

    def _module_runtimes(self, recipe: Recipe) -> dict[str, RunRuntime]:
        """One runtime per module, dependencies first, after checking the module map (ConfigError)."""
        if not recipe.modules:
            return {}
        whole = model_tensors(build_model(recipe, self.trust))
        assign(recipe.modules, whole)  # every tensor in exactly one module, no module empty
        data = self.hub.runtimes.load_data(recipe)
        runtimes = {
            name: RunRuntime.build(recipe, name, data, self.trust) for name in training_order(recipe.modules)
        }
        for name, runtime in runtimes.items():
            check_module(name, runtime, whole)
            owner = recipe.modules[name].owner
            if owner is not None:
                try:
                    self.hub.providers.find(owner)
                except NotFound as exc:
                    raise ConfigError(
                        f"modules.{name}.owner: no provider named {owner!r} on this hub"
                    ) from exc
        return runtimes

    def _collective_id(self, name: str | None, who: Principal) -> str | None:
        """The id of the recipe's collective; a run is attached to a collective only by one of its
        members (or the collective itself, or a hub admin)."""
        if name is None:
            return None
        collective_id = self.hub.providers.find(name)
        with self.hub.state.transaction() as s:
            provider = s.get(Provider, collective_id)
            if provider is None or provider.kind != "collective":
                raise ConfigError(f"run.collective {name!r} is not a collective on this hub")
        if not (who.is_admin or collective_id in who.collectives or collective_id == who.provider_id):
            raise Forbidden(
                f"{who.name} is not a member of the collective {name}: only its members attach runs to it"
            )
        return collective_id

    def pause(self, run_id: str, who: Principal, paused: bool) -> None:
        """Pause the run (no new leases; pool workers move on at their next round boundary) or
        resume it: its owner or a hub admin (403 for others, 400 for a module or finished run)."""
        with self.hub.state.transaction() as s:
            run = queries.run(s, run_id, lock=True)
            require_reader(who, run_id, run.owner_id, run.collective_id)
            if not (who.is_admin or who.provider_id == run.owner_id):
                raise Forbidden(f"only run {run_id}'s owner or a hub admin may pause or resume it")
            if run.parent_id is not None:
                raise ConfigError(f"run {run_id} is a module of run {run.parent_id}; pause that run")
            if run.status == "finished":
                raise ConfigError(f"run {run_id} has finished; there is nothing to pause or resume")
            run.paused = paused
        log.info("run %s %s by %s", run_id, "paused" if paused else "resumed", who.name)

    def authorize(self, run_id: str, who: Principal) -> None:
        """403 unless ``who`` may work on the run (see tessera.hub.auth)."""
        with self.hub.state.reading() as s:
            participant(s, run_id, who)

    def authorize_read(self, run_id: str, who: Principal) -> None:
        """403 unless ``who`` may read the run's status, metrics, versions and blobs."""
        with self.hub.state.reading() as s:
            run = queries.run(s, run_id)
            require_reader(who, run_id, run.owner_id, run.collective_id)


def participant(s: Session, run_id: str, who: Principal, lock: bool = False) -> Run:
    """The run, in the caller's transaction (``lock``: with its row lock); 403 unless ``who`` may
    work on it."""
    run = queries.run(s, run_id, lock=lock)
    require_participant(who, run_id, run.owner_id, run.collective_id)
    return run


def version_zero(runtime: RunRuntime) -> tuple[bytes, float | None]:
    """Version 0's blob and held-out loss, measured now unless the module depends on others (then
    once they have finished); outside any transaction."""
    waits = runtime.module is not None and bool(runtime.recipe.modules[runtime.module].depends)
    return to_bytes(runtime.initial), None if waits else first_loss(runtime)


def first_loss(runtime: RunRuntime) -> float:
    """Version 0's held-out loss: the first time the model meets the recipe's data, so a model
    that cannot take it is a ConfigError saying what the contract is."""
    try:
        return runtime.evaluate(runtime.initial)
    except TesseraError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError, AttributeError) as exc:
        loss = runtime.recipe.train.loss
        raise ConfigError(
            f"the model failed on a held-out batch of the recipe's data ({type(exc).__name__}: {exc}); "
            "its forward takes the batch's inputs (for a language model: token ids, int64, of shape "
            f"(batch, time)) and returns what the loss {loss!r} compares with the targets (for "
            "cross_entropy: logits of shape (batch, time, vocabulary) whose vocabulary covers the "
            "data's tokens)"
        ) from exc
