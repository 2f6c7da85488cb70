"""Turn a recipe into live objects: the model, its data source and its loss.

A recipe names factories as ``package.module:function``. Only factories the machine trusts are
imported and called (``tessera.trust``), with options they declare; a model's size is computed
on PyTorch's meta device, without allocating it, before it is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from tessera.core.inner import LossFn, loss_function
from tessera.core.tensors import TensorDict, clone_tensors
from tessera.data.mixture import DatasetFiles, DatasetMixture, MixtureSettings
from tessera.data.source import DataSource
from tessera.data.tokens import data_folder, tokenizer_location
from tessera.errors import ConfigError, DataError, TesseraError
from tessera.recipe import Recipe
from tessera.settings import from_table
from tessera.trust import Trust, check_options

DEFAULT_TRUST = Trust()  # tessera's own factories and declared entry points; no data folders


def model_factory(recipe: Recipe, trust: Trust) -> Callable[..., Any]:
    """The recipe's trusted model factory, its options checked against its parameters."""
    factory = trust.resolve(recipe.model.factory, "model")
    check_options(factory, recipe.model.options, recipe.model.factory)
    return factory


def call_factory(factory: Callable[..., Any], spec: str, *args: Any, **options: Any) -> Any:
    """A trusted factory's result; whatever it raises becomes a ConfigError naming it (the
    factory is the owner's code: the fix is in its options or in it)."""
    try:
        return factory(*args, **options)
    except TesseraError:
        raise
    except (TypeError, ValueError, ArithmeticError) as exc:  # how a factory says an option is wrong
        raise ConfigError(f"{spec} refused its options: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # the factory's own failure: told, not a server error
        raise ConfigError(
            f"{spec} failed: {type(exc).__name__}: {exc}; fix the factory or its options"
        ) from exc


def build_model(recipe: Recipe, trust: Trust = DEFAULT_TRUST) -> nn.Module:
    """The recipe's model with deterministic initial weights (seeded by ``recipe.seed``)."""
    factory = model_factory(recipe, trust)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = call_factory(factory, recipe.model.factory, **recipe.model.options)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model factory {recipe.model.factory!r} returned {type(model).__name__}, "
            "expected a torch.nn.Module"
        )
    return model


class SkipMetaInit(TorchFunctionMode):
    """Random initialisation of meta tensors as a no-op (they hold no values; on meta, normal_
    would first import torch's compiler, 2 s)."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in META_INIT:
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


META_INIT = frozenset({"normal_", "uniform_", "trunc_normal_", "bernoulli_", "exponential_"})


def meta_model(recipe: Recipe, trust: Trust = DEFAULT_TRUST) -> nn.Module:
    """The recipe's model on the meta device: its shapes, with nothing allocated."""
    factory = model_factory(recipe, trust)
    with torch.device("meta"), SkipMetaInit():
        model = call_factory(factory, recipe.model.factory, **recipe.model.options)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {recipe.model.factory!r} returned {type(model).__name__}")
    return model


def model_bytes(recipe: Recipe, trust: Trust = DEFAULT_TRUST) -> int:
    """Bytes of the recipe's parameters and buffers, measured on the meta device: nothing is
    allocated, so a model far too big for the machine is measured, not built."""
    model = meta_model(recipe, trust)
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def load_data(
    recipe: Recipe,
    path: str | None = None,
    trust: Trust = DEFAULT_TRUST,
    datasets: DatasetFiles | None = None,
) -> DataSource:
    """The recipe's data source, reading ``path`` (a worker's own data, its owner's choice) or the
    recipe's path, which must lie inside one of the machine's data roots; a recipe that names
    dataset versions reads them from ``datasets`` (the hub's store, or a worker's cache)."""
    if recipe.data.datasets:
        return dataset_source(recipe, datasets)
    spec = recipe.data.source
    factory = trust.resolve(spec, "data")
    check_options(factory, recipe.data.options, spec, given=("path",))
    if path is None and recipe.data.path is not None:
        path = str(trust.data_path(recipe.data.path))
    tokenizer = recipe.data.options.get("tokenizer")
    if isinstance(tokenizer, str):
        check_tokenizer_path(tokenizer, path, trust)
    source = call_factory(factory, spec, path, **recipe.data.options)
    for method in ("shard_names", "train_batches", "validation_batches"):
        if not callable(getattr(source, method, None)):
            raise ConfigError(f"data source {spec!r} returned an object without {method}()")
    if not source.shard_names():
        raise DataError(f"data source {spec!r} has no shards")
    return source


def dataset_source(recipe: Recipe, datasets: DatasetFiles | None) -> DatasetMixture:
    if datasets is None:
        raise ConfigError("this recipe trains on dataset versions of a hub; they are read through the hub")
    settings = from_table("data.options", MixtureSettings, recipe.data.options)
    return DatasetMixture(list(recipe.data.datasets), datasets, settings)


def check_tokenizer_path(tokenizer: str, data: str | None, trust: Trust) -> None:
    """ConfigError unless the recipe's tokenizer file lies inside the data folder being read, or
    inside one of the machine's data roots (a relative path is taken inside the data folder)."""
    folder = data_folder(Path(data).expanduser().resolve()) if data else None
    resolved = tokenizer_location(tokenizer, folder).resolve()
    if folder is None or (resolved != folder and folder not in resolved.parents):
        trust.data_path(str(resolved))


@dataclass(frozen=True)
class Code:
    """A factory a run calls on the machine that trains or evaluates it, and why it is trusted."""

    role: str  # model | data
    spec: str
    origin: str | None  # None: not trusted here


def run_code(recipe: Recipe, trust: Trust) -> list[Code]:
    """The code ``recipe`` would run here, imported by nothing (to show before joining a run)."""
    specs = [("model", recipe.model.factory), ("data", recipe.data.source)]
    return [Code(role, spec, trust.origin(spec)) for role, spec in specs]


def require_trusted(recipe: Recipe, trust: Trust) -> list[Code]:
    """``run_code``, or ConfigError naming the first factory this machine does not trust."""
    code = run_code(recipe, trust)
    for c in code:
        trust.require(c.spec, c.role)
    return code


def loss_of(recipe: Recipe) -> LossFn:
    return loss_function(recipe.train.loss)


def model_tensors(model: nn.Module) -> TensorDict:
    """The tensors that make up a version: the model's full state dict, on CPU."""
    return clone_tensors(model.state_dict())


def training_flops_per_token(model: nn.Module) -> float:
    """FLOPs to train on one target element: the reference LM's formula (6N plus attention; a
    modular LM adds 6 x its experts' parameters), else 6 x trainable parameters (forward 2N,
    backward 4N)."""
    from tessera.models.lm import ByteLM, flops_per_token
    from tessera.models.modular import ModularLM

    if isinstance(model, ModularLM):
        experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
        return float(flops_per_token(model.cfg)) + 6.0 * experts
    if isinstance(model, ByteLM):
        return float(flops_per_token(model.cfg))
    return 6.0 * sum(p.numel() for p in model.parameters() if p.requires_grad)


def assemble(
    recipe: Recipe,
    parts: Sequence[TensorDict],
    experts: Sequence[str] | None = None,
    trust: Trust = DEFAULT_TRUST,
) -> nn.Module:
    """A run's model from its versions' tensors (one per module of a modular run). With
    ``experts`` only those experts are built and loaded: the others' tensors are left out (a data
    owner's opt-out); without, a modular LM routes between all of them."""
    model = with_experts(recipe, experts, trust)
    wanted = set(model.state_dict())
    model.load_state_dict({k: v for part in parts for k, v in part.items() if k in wanted})
    return model


def with_experts(recipe: Recipe, experts: Sequence[str] | None, trust: Trust = DEFAULT_TRUST) -> nn.Module:
    """The recipe's model built with only ``experts`` (all of them when None)."""
    if experts is not None:
        known = recipe.model.options.get("experts")
        if known is None:
            raise ConfigError("choosing experts needs a model with experts (tessera.models.modular:build)")
        unknown = sorted(set(experts) - set(known))
        if unknown:
            raise ConfigError(f"no experts {unknown} in this run; it has {list(known)}")
        options = {**recipe.model.options, "experts": list(experts)}
        recipe = replace(recipe, model=replace(recipe.model, options=options))
    return build_model(recipe, trust)


def configure_torch(threads: int | None) -> None:
    """Process-wide torch settings of the hub and workers: thread count, and denormal floats
    flushed to zero (on CPUs, denormals in the optimizer state slowed inner steps ~30% over a
    few rounds: bench/plan_accuracy.py measured it)."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
