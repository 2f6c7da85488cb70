"""The runtimes (model, held-out data, checks) of the runs this hub process used last, and the
runs' parsed recipes: caches, rebuilt from the database on demand, so dropping one loses nothing
(a finished run's runtime is dropped at once)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from tessera.blobs import BlobStore
from tessera.core.tensors import from_bytes
from tessera.data.source import DataSource
from tessera.errors import ConfigError
from tessera.hub import queries
from tessera.hub.dataset_files import StoredFiles
from tessera.hub.modules import frozen_versions
from tessera.hub.runtime import RunRuntime
from tessera.hub.state import State
from tessera.hub.tables import Run, Version
from tessera.recipe import Recipe, parse_recipe
from tessera.task import load_data
from tessera.trust import Trust

CACHED_RECIPES = 1024


class Runtimes:
    """At most ``size`` runtimes, least recently used dropped first. Building one (a model, its
    data) happens outside the cache's lock; two threads that build the same keep the first."""

    def __init__(self, state: State, store: BlobStore, trust: Trust, size: int) -> None:
        self.state, self.store, self.trust, self.size = state, store, trust, size
        self.files = StoredFiles(state, store)
        self._runtimes: OrderedDict[str, RunRuntime] = OrderedDict()
        self._recipes: OrderedDict[str, Recipe] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str) -> RunRuntime:
        """The run's runtime, built from its recipe on first use (a module's on top of the final
        versions of the modules it depends on, once they have finished)."""
        with self._lock:
            if run_id in self._runtimes:
                self._runtimes.move_to_end(run_id)
                return self._runtimes[run_id]
        with self.state.reading() as s:
            module = queries.run(s, run_id).module
        recipe = self.whole_recipe(run_id)
        if recipe.modules and module is None:
            raise ConfigError(
                f"run {run_id} is modular: work on one of its modules "
                f"({', '.join(recipe.modules)}); `tessera worker --module` picks one"
            )
        runtime = RunRuntime.build(recipe, module, self.load_data(recipe), trust=self.trust)
        with self.state.reading() as s:
            self.load_frozen(runtime, frozen_versions(s, queries.run(s, run_id), runtime.recipe) or [])
        return self.keep(run_id, runtime)

    def load_data(self, recipe: Recipe) -> DataSource:
        """The recipe's data as the hub reads it (its dataset versions from the blob store)."""
        return load_data(recipe, trust=self.trust, datasets=self.files)

    def keep(self, run_id: str, runtime: RunRuntime) -> RunRuntime:
        """Cache ``runtime`` (unless another thread cached one first: that one is returned)."""
        with self._lock:
            kept = self._runtimes.setdefault(run_id, runtime)
            self._runtimes.move_to_end(run_id)
            while len(self._runtimes) > self.size:
                self._runtimes.popitem(last=False)
            return kept

    def holds(self, run_id: str) -> bool:
        """Whether the run's runtime is cached now (``get`` would not build it)."""
        with self._lock:
            return run_id in self._runtimes

    def drop(self, run_id: str) -> None:
        with self._lock:
            self._runtimes.pop(run_id, None)

    def cached(self) -> list[str]:
        """Runs whose runtime this process holds, least recently used first."""
        with self._lock:
            return list(self._runtimes)

    def whole_recipe(self, run_id: str) -> Recipe:
        """The run's recipe as stored (a module's: its modular run's), parsed once and cached."""
        with self._lock:
            if run_id in self._recipes:
                return self._recipes[run_id]
        with self.state.reading() as s:
            text = queries.run(s, run_id).recipe
        recipe = parse_recipe(text)
        with self._lock:
            self._recipes[run_id] = recipe
            while len(self._recipes) > CACHED_RECIPES:
                self._recipes.popitem(last=False)
        return recipe

    def recipe_of(self, run: Run) -> Recipe:
        """The recipe as the run trains: a module's own rounds, quorum and H applied."""
        recipe = self.whole_recipe(run.id)
        return recipe.for_module(run.module) if run.module else recipe

    def load_frozen(self, runtime: RunRuntime, frozen: list[tuple[str, Run, Version]]) -> None:
        """The versions a module trains on, loaded once into its runtime (for evaluation)."""
        ids = tuple(v.id for _, _, v in frozen)
        with runtime.lock:
            if runtime.frozen_ids != ids:
                runtime.frozen = {
                    k: t for _, _, v in frozen for k, t in from_bytes(self.store.get(v.blob_sha)).items()
                }
                runtime.frozen_ids = ids
