"""Modular runs at the hub: checks of a module map, and what a module needs of its siblings.

A modular run is stored as a parent run with one child run per module (``Run.parent_id``,
``Run.module``); each child has its own versions, rounds, leases and contributions. A module
trains on top of the final versions of the modules it depends on, so its leases wait until
they have finished.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.core.modules import closure, training_order
from tessera.core.tensors import TensorDict
from tessera.errors import ConfigError, NotFound
from tessera.hub.runtime import RunRuntime
from tessera.hub.tables import Run, Version
from tessera.recipe import Recipe, parse_recipe
from tessera.task import model_tensors


def check_module(name: str, runtime: RunRuntime, whole: TensorDict) -> None:
    """ConfigError unless the model that trains module ``name`` is built exactly as the whole model
    is (so that versions of modules fit together). Tensors of modules it does not depend on stay
    at their initial values while it trains."""
    if not runtime.initial:
        raise ConfigError(f"modules.{name}: the model built with its model_options has none of its tensors")
    built = model_tensors(runtime.model)
    unknown = sorted(set(built) - set(whole))
    if unknown:
        raise ConfigError(f"modules.{name}: its model has tensors {unknown[:3]} that the whole model lacks")
    differ = sorted(k for k, v in built.items() if v.shape != whole[k].shape or not v.equal(whole[k]))
    if differ:
        raise ConfigError(
            f"modules.{name}: tensors {differ[:3]} start differently than in the whole model; the model "
            "factory must initialise a tensor the same way whatever model_options select"
        )


def siblings(s: Session, run: Run) -> dict[str, Run]:
    """The modules of ``run``'s modular run, by name."""
    rows = s.scalars(select(Run).where(Run.parent_id == run.parent_id)).all()
    return {r.module: r for r in rows if r.module is not None}


def modules_of(s: Session, parent: Run) -> dict[str, Run]:
    """The modules of a modular run by name, dependencies first (empty for other runs)."""
    rows = {r.module: r for r in s.scalars(select(Run).where(Run.parent_id == parent.id)) if r.module}
    if not rows:
        return {}
    return {name: rows[name] for name in training_order(parse_recipe(parent.recipe).modules)}


def frozen_versions(s: Session, run: Run, recipe: Recipe) -> list[tuple[str, Run, Version]] | None:
    """(module, run, latest version) of each module ``run`` depends on; None while one of them
    is still training (its final version is what the module trains on)."""
    if run.module is None or not recipe.modules[run.module].depends:
        return []
    family = siblings(s, run)
    out = []
    for name in closure(recipe.modules, run.module):
        dep = family[name]
        if dep.status != "finished":
            return None
        version = s.scalar(
            select(Version).where(Version.run_id == dep.id).order_by(Version.number.desc()).limit(1)
        )
        if version is None:
            raise NotFound(f"module {name} has no version")
        out.append((name, dep, version))
    return out
