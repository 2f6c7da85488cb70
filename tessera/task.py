"""Turn a recipe into live objects: the model, its data source and its loss.

A recipe names factories as ``package.module:function``; any importable function works, so a
user brings their own model and data without touching tessera's code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from tessera.core.inner import LossFn, loss_function
from tessera.core.tensors import TensorDict, clone_tensors
from tessera.data.source import DataSource
from tessera.errors import ConfigError, DataError
from tessera.recipe import Recipe


def resolve_factory(spec: str) -> Callable[..., Any]:
    """Import ``package.module:function``; a wrong name raises ConfigError."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"factory {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for factory {spec!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{module_name!r} has no callable {attr!r} (factory {spec!r})")
    return factory


def build_model(recipe: Recipe) -> nn.Module:
    """The recipe's model with deterministic initial weights (seeded by ``recipe.seed``)."""
    factory = resolve_factory(recipe.model.factory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = factory(**recipe.model.options)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model factory {recipe.model.factory!r} returned {type(model).__name__}, "
            "expected a torch.nn.Module"
        )
    return model


def load_data(recipe: Recipe, path: str | None = None) -> DataSource:
    """The recipe's data source, reading ``path`` (a worker's own data) or the recipe's."""
    factory = resolve_factory(recipe.data.source)
    source = factory(path if path is not None else recipe.data.path, **recipe.data.options)
    for method in ("shard_names", "train_batches", "validation_batches"):
        if not callable(getattr(source, method, None)):
            raise ConfigError(f"data source {recipe.data.source!r} returned an object without {method}()")
    if not source.shard_names():
        raise DataError(f"data source {recipe.data.source!r} has no shards")
    return source


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


def assemble(recipe: Recipe, parts: Sequence[TensorDict], experts: Sequence[str] | None = None) -> nn.Module:
    """A run's model from its versions' tensors (one per module of a modular run). With
    ``experts`` only those experts are built and loaded: the others' tensors are left out (a data
    owner's opt-out); without, a modular LM routes between all of them."""
    model = with_experts(recipe, experts)
    wanted = set(model.state_dict())
    model.load_state_dict({k: v for part in parts for k, v in part.items() if k in wanted})
    return model


def with_experts(recipe: Recipe, experts: Sequence[str] | None) -> nn.Module:
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
    return build_model(recipe)


def configure_torch(threads: int | None) -> None:
    """Process-wide torch settings of the hub and workers: thread count, and denormal floats
    flushed to zero (on CPUs, denormals in the optimizer state slowed inner steps ~30% over a
    few rounds: bench/plan_accuracy.py measured it)."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
