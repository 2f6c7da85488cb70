"""What the hub keeps in memory per run: model for evaluation, held-out batches, checks.

Everything here is rebuilt from the recipe stored in the database, so a restarted hub needs
nothing else (and the hub may drop a runtime from memory at any time: finished runs' are).
A module's runtime holds the model as that module trains it (its recipe's
``model_options``), the module's tensors as reference, the frozen modules it depends on, and
the held-out data of its shards.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from tessera.core.codecs import codec
from tessera.core.inner import Batch, LossFn, evaluate
from tessera.core.modules import freeze_outside
from tessera.core.outer import OuterOptimizer, outer_optimizer
from tessera.core.tensors import TensorDict, check_compatible, float_tensors, global_norm
from tessera.core.validation import base_size
from tessera.data.source import DataSource, ShardedValidation
from tessera.errors import ConfigError, DataError, MalformedContribution
from tessera.recipe import Recipe
from tessera.task import (
    DEFAULT_TRUST,
    build_model,
    load_data,
    loss_of,
    model_tensors,
    training_flops_per_token,
)
from tessera.trust import Trust

SAFETENSORS_HEADER_ALLOWANCE = 4096
SHA256 = re.compile(r"[0-9a-f]{64}")
HEADER_BYTES_PER_TENSOR = 256


@dataclass
class RunRuntime:
    """One run's (or module's) model and checks. ``lock`` guards what requests share: the model
    (evaluation and the quality probe load weights into it), the frozen modules loaded into it,
    and the per-version caches; decoding and size checks need no lock."""

    recipe: Recipe  # as the run (or module) trains: a module's overrides applied
    model: nn.Module
    loss_fn: LossFn
    validation: list[Batch]
    reference: TensorDict  # float tensors of a version: the whole model's, or the module's
    shards: list[str]
    outer: OuterOptimizer
    flops_per_token: float
    initial: TensorDict  # version 0
    module: str | None = None
    frozen: TensorDict = field(default_factory=dict)  # the modules it depends on, at their versions
    frozen_ids: tuple[str, ...] = ()  # ids of those versions
    probe_losses: dict[str, float] = field(default_factory=dict)  # version id -> probe loss
    sizes: dict[str, float] = field(default_factory=dict)  # version id -> its size (validation)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def build(
        cls,
        recipe: Recipe,
        module: str | None = None,
        data: DataSource | None = None,
        trust: Trust = DEFAULT_TRUST,
    ) -> RunRuntime:
        """The runtime of a run, or of one module of a modular run (``data``: the recipe's data
        source, when the caller has it loaded already), with the factories ``trust`` allows."""
        data = data or load_data(recipe, trust=trust)
        if module is None:
            model = build_model(recipe, trust)
            initial = model_tensors(model)
            return cls.of(recipe, model, data, initial, data.shard_names())
        trains = recipe.for_module(module)
        model = build_model(trains, trust)
        names = freeze_outside(model, recipe.modules, module)
        mine = {k: v for k, v in model_tensors(model).items() if k in names}
        shards = module_shards(module, recipe.modules[module].shards, data)
        return cls.of(trains, model, data, mine, shards, module)

    @classmethod
    def of(
        cls,
        recipe: Recipe,
        model: nn.Module,
        data: DataSource,
        initial: TensorDict,
        shards: list[str],
        module: str | None = None,
    ) -> RunRuntime:
        return cls(
            recipe=recipe,
            model=model,
            loss_fn=loss_of(recipe),
            validation=held_out(recipe, data, shards if module else []),
            reference=float_tensors(initial),
            shards=shards,
            outer=outer_optimizer(recipe.outer),
            flops_per_token=training_flops_per_token(model),
            initial=initial,
            module=module,
        )

    @property
    def targets_per_example(self) -> int:
        """Target elements in one example of the held-out data: what one example of a batch
        trains on (bounds the tokens a contribution may claim)."""
        if not self.validation:
            raise DataError("the run's data source gave no held-out batches")
        _, targets = self.validation[0]
        return max(1, int(targets[0].numel())) if targets.ndim else 1

    def size_of(self, version_id: str, tensors: Callable[[], TensorDict]) -> float:
        """The size an update of this version is measured against (cached per version: the
        version's ``tensors`` are read only on its first use)."""
        if version_id not in self.sizes:  # two threads may both measure it: the same value
            floats = float_tensors(tensors())
            self.sizes[version_id] = base_size(global_norm(floats), sum(t.numel() for t in floats.values()))
        return self.sizes[version_id]

    def load(self, tensors: TensorDict) -> None:
        """The model with these weights (and a module's frozen dependencies)."""
        self.model.load_state_dict({**self.frozen, **tensors}, strict=self.module is None)

    def evaluate(self, tensors: TensorDict) -> float:
        """Held-out loss of the model with these weights."""
        with self.lock:
            self.load(tensors)
            return evaluate(self.model, self.validation, self.loss_fn)

    def probe_loss(self, tensors: TensorDict) -> float:
        """Held-out loss on the first ``validation.probe_batches`` batches (the quality probe)."""
        with self.lock:
            self.load(tensors)
            return evaluate(self.model, self.validation[: self.recipe.validation.probe_batches], self.loss_fn)

    def decode(self, wire: TensorDict, codec_name: str) -> TensorDict:
        """The float32 pseudo-gradient in an upload, checked against the model (MalformedContribution)."""
        if codec_name != self.recipe.communication.codec:
            raise MalformedContribution(
                f"contribution encoded with {codec_name!r}, but this run's codec is "
                f"{self.recipe.communication.codec!r}; encode with the run's codec"
            )
        tensors = codec(codec_name).decode(wire, {k: v.shape for k, v in self.reference.items()})
        check_compatible(tensors, self.reference)
        return tensors

    def upload_limit(self) -> int:
        """Largest acceptable contribution body: the fp32 tensors (top-k of a one-value tensor
        takes 6 bytes: hence 1.5x), two wire parts per tensor, and a generous header."""
        data = sum(t.numel() * t.element_size() for t in self.reference.values())
        return (
            int(1.5 * data) + 2 * HEADER_BYTES_PER_TENSOR * len(self.reference) + SAFETENSORS_HEADER_ALLOWANCE
        )


def module_shards(module: str, named: tuple[str, ...], data: DataSource) -> list[str]:
    """The shards a module trains on: those it names (a dataset version's id: all of that
    version's shards), or all of them; ConfigError for a name the data does not have."""
    have = data.shard_names()
    if not named:
        return have
    found = []
    for name in named:
        matching = [s for s in have if s.startswith(f"{name[:12]}-")] if SHA256.fullmatch(name) else []
        if not matching and name not in have:
            raise ConfigError(
                f"modules.{module}.shards: no shard or dataset version {name!r}; the data has {have}"
            )
        found += matching or [name]
    return found


def held_out(recipe: Recipe, data: DataSource, shards: list[str]) -> list[Batch]:
    """The recipe's held-out batches; of the given shards only, when the source holds out per shard."""
    size, count = recipe.eval.batch_size, recipe.eval.batches
    if not shards or not isinstance(data, ShardedValidation):
        return data.validation_batches(size, count)
    each = max(1, count // len(shards))
    batches = [batch for shard in shards for batch in data.shard_validation_batches(shard, size, each)]
    if not batches:
        raise DataError(
            f"shards {shards[:4]} hold out nothing the hub can read (private data only); give the module "
            "a shard of data the hub holds, to evaluate its versions on"
        )
    return batches
