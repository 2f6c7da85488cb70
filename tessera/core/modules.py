"""Module maps: a model's tensors split into named, separately versioned modules.

A recipe declares modules as ``[modules.<name>]`` tables: ``params``, patterns (``fnmatch``) over
the model's state-dict names; ``depends``, the modules it is trained on top of (frozen, at their
final versions); optionally ``shards`` (the data it trains on), ``owner`` (only that provider's
nodes, or its collective's members, may train it: its data stays there), ``model_options``
(factory options while training it, e.g. only its own expert) and per-module ``rounds``,
``quorum``, ``inner_steps`` and ``outer`` (e.g. ``{ kind = "average" }`` for a module one
worker trains in one round). Every tensor of the model belongs to exactly one module.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from tessera.errors import ConfigError

MODULE_KEYS = (
    "params",
    "depends",
    "shards",
    "owner",
    "model_options",
    "rounds",
    "quorum",
    "inner_steps",
    "outer",
)


MAX_SETTING = 1_000_000  # rounds, quorum and inner steps of a module
MAX_MODULES = 64


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    params: tuple[str, ...]
    depends: tuple[str, ...] = ()
    shards: tuple[str, ...] = ()
    owner: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    rounds: int | None = None
    quorum: int | None = None
    inner_steps: int | None = None
    outer: dict[str, Any] = field(default_factory=dict)  # [outer] keys for this module

    def __post_init__(self) -> None:
        where = f"modules.{self.name}"
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"module name {self.name!r}: use letters, digits, '-' and '_'")
        if not self.params or not all(isinstance(p, str) and p for p in self.params):
            raise ConfigError(f'{where}.params must list parameter-name patterns, e.g. ["blocks.*.mlp.*"]')
        if self.name in self.depends:
            raise ConfigError(f"{where}.depends names the module itself")
        if not isinstance(self.model_options, dict) or not isinstance(self.outer, dict):
            raise ConfigError(f"{where}.model_options and {where}.outer must be tables")
        for key in ("rounds", "quorum", "inner_steps"):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SETTING
            ):
                raise ConfigError(
                    f"{where}.{key} must be a positive integer up to {MAX_SETTING}, got {value!r}"
                )

    def matches(self, tensor_name: str) -> bool:
        return any(fnmatch.fnmatchcase(tensor_name, p) for p in self.params)


def parse_modules(table: Any) -> dict[str, ModuleSpec]:
    """The ``[modules]`` section: one table per module; ConfigError naming the key otherwise."""
    if not isinstance(table, dict):
        raise ConfigError("[modules] must hold one table per module, e.g. [modules.trunk]")
    if len(table) > MAX_MODULES:
        raise ConfigError(f"a recipe has at most {MAX_MODULES} modules, got {len(table)}")
    specs = {}
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"modules.{name} must be a table with params = [...]")
        unknown = sorted(set(entry) - set(MODULE_KEYS))
        if unknown:
            raise ConfigError(f"unknown key modules.{name}.{unknown[0]}; allowed keys: {list(MODULE_KEYS)}")
        for key in ("params", "depends", "shards"):
            if key in entry and not (
                isinstance(entry[key], list) and all(isinstance(v, str) for v in entry[key])
            ):
                raise ConfigError(f"modules.{name}.{key} must be a list of strings")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
        specs[name] = ModuleSpec(name=name, **values)
    for spec in specs.values():
        missing = sorted(set(spec.depends) - set(specs))
        if missing:
            raise ConfigError(f"modules.{spec.name}.depends names unknown modules {missing}")
    training_order(specs)
    return specs


def training_order(specs: Mapping[str, ModuleSpec]) -> list[str]:
    """Modules with their dependencies first; ConfigError on a cycle."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ConfigError(f"modules depend on each other in a cycle through {name!r}")
        visiting.add(name)
        for dep in specs[name].depends:
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in specs:
        visit(name)
    return order


def closure(specs: Mapping[str, ModuleSpec], name: str) -> list[str]:
    """``name``'s dependencies, theirs, and so on (not ``name`` itself), dependencies first."""
    return [m for m in training_order(specs) if m != name and m in _needed(specs, name)]


def _needed(specs: Mapping[str, ModuleSpec], name: str) -> set[str]:
    needed = set(specs[name].depends)
    for dep in specs[name].depends:
        needed |= _needed(specs, dep)
    return needed


def assign(
    specs: Mapping[str, ModuleSpec], names: Iterable[str], every_module: bool = True
) -> dict[str, str]:
    """Tensor name -> module; ConfigError if a tensor matches no module or several, or (with
    ``every_module``: the whole model) a module matches no tensor."""
    owner: dict[str, str] = {}
    unmatched, doubled = [], []
    for tensor in names:
        hits = [m for m, spec in specs.items() if spec.matches(tensor)]
        if not hits:
            unmatched.append(tensor)
        elif len(hits) > 1:
            doubled.append(f"{tensor} ({', '.join(hits)})")
        else:
            owner[tensor] = hits[0]
    if unmatched:
        raise ConfigError(f"no module's params match {unmatched[:5]}; add patterns to a [modules] table")
    if doubled:
        raise ConfigError(f"tensors matched by several modules: {doubled[:5]}; make the patterns disjoint")
    empty = sorted(set(specs) - set(owner.values()))
    if empty and every_module:
        raise ConfigError(f"modules {empty} match no tensor of the model; check their params patterns")
    return owner


def freeze_outside(model: torch.nn.Module, specs: Mapping[str, ModuleSpec], module: str) -> set[str]:
    """Freeze every parameter of ``model`` outside ``module``; the names of the module's tensors
    (the model may hold only some of the modules: a module's worker builds only what it needs)."""
    names = set(model.state_dict())
    owner = assign(specs, names, every_module=False)
    for name, param in model.named_parameters():
        param.requires_grad_(owner[name] == module)
    return {k for k in names if owner[k] == module}
