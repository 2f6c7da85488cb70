"""Trust: the code and the folders a machine's owner lets a recipe use there.

A recipe is data. It names a model factory and a data source as ``package.module:function``;
a hub or a worker imports and calls one only if its owner trusts it:

- tessera's own factories (``BUILTIN``), among them ``tessera.models.hf:causal_lm``, which builds
  a Hugging Face ``transformers`` architecture from a declarative config (no user code);
- factories that installed packages declare as entry points in the group ``tessera.factories``
  (installing such a package is its owner's choice);
- factories the owner lists: ``--trust package.module:function`` on ``tessera hub`` and
  ``tessera worker``, or ``[trust] factories`` in the hub's configuration file.

Anything else is refused with a ConfigError *before* its module is imported. A trusted module
whose files change is imported afresh for the next run (``tessera.imports``): no restart. A
trusted factory is called only with options it declares, of the types it declares (checked
strictly, before the call). A recipe's ``[data] path`` is read only inside the owner's data
roots (``--data-root``); the folder a worker's owner passes with ``--data`` is the owner's own
choice and always allowed.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tessera.errors import ConfigError
from tessera.imports import import_fresh

ENTRY_POINT_GROUP = "tessera.factories"
BUILTIN = frozenset(
    {
        "tessera.models.lm:build",
        "tessera.models.modular:build",
        "tessera.models.hf:causal_lm",
        "tessera.data.text:load",
        "tessera.data.records:load",
    }
)
SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def check_spec(spec: str, role: str) -> str:
    """``spec`` if it is written ``package.module:function``; ConfigError otherwise."""
    if not isinstance(spec, str) or not SPEC.match(spec):
        raise ConfigError(f"{role} factory {spec!r} must look like 'package.module:function'")
    return spec


def declared_factories() -> dict[str, str]:
    """Factories declared by installed packages (entry point value -> distribution); reading
    package metadata imports nothing."""
    found = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        dist = point.dist.name if point.dist is not None else "an installed package"
        found[point.value.replace(" ", "")] = dist
    return found


@dataclass(frozen=True)
class Trust:
    """What one machine's owner trusts: factories beyond tessera's own, and data folders."""

    factories: frozenset[str] = frozenset()
    data_roots: tuple[Path, ...] = ()
    entry_points: bool = True  # trust factories that installed packages declare

    def __post_init__(self) -> None:
        for spec in self.factories:
            check_spec(spec, "trusted")

    @classmethod
    def of(cls, factories: Iterable[str] = (), data_roots: Iterable[str | Path] = ()) -> Trust:
        return cls(frozenset(factories), tuple(Path(p) for p in data_roots))

    def origin(self, spec: str) -> str | None:
        """Why ``spec`` is trusted here, or None when it is not."""
        if spec in BUILTIN:
            return "built into tessera"
        if spec in self.factories:
            return "allowed by this machine's configuration"
        if self.entry_points and spec in (declared := declared_factories()):
            return f"declared by the installed package {declared[spec]}"
        return None

    def require(self, spec: str, role: str) -> str:
        """``spec``'s origin; ConfigError, before anything is imported, if it is not trusted."""
        check_spec(spec, role)
        origin = self.origin(spec)
        if origin is None:
            raise ConfigError(
                f"{role} factory {spec!r} is not trusted on this machine, so it was not imported. "
                f"Trusted here: tessera's own ({', '.join(sorted(BUILTIN))})"
                + (f" and {', '.join(sorted(self.factories))}" if self.factories else "")
                + f". If you trust its code, allow it with --trust {spec}"
            )
        return origin

    def resolve(self, spec: str, role: str) -> Callable[..., Any]:
        """The trusted factory ``spec``, imported only after the trust check."""
        self.require(spec, role)
        module_name, _, attr = spec.partition(":")
        try:
            module = import_fresh(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import {module_name!r} for {role} factory {spec!r}: {exc}; it must be importable "
                "on this machine: install its package, or start tessera in the folder that holds it "
                "(or add that folder to PYTHONPATH)"
            ) from exc
        except Exception as exc:  # the module's own code failed as it was imported
            raise ConfigError(
                f"importing {module_name!r} for {role} factory {spec!r} failed: {type(exc).__name__}: {exc}; "
                "fix the module (the next run imports it afresh)"
            ) from exc
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ConfigError(f"{module_name!r} has no callable {attr!r} ({role} factory {spec!r})")
        return factory

    def data_path(self, path: str) -> Path:
        """A recipe's data folder, resolved; ConfigError unless it lies inside a data root."""
        resolved = Path(path).expanduser().resolve()
        for root in self.data_roots:
            base = root.expanduser().resolve()
            if resolved == base or base in resolved.parents:
                return resolved
        roots = ", ".join(str(r) for r in self.data_roots) or "none"
        raise ConfigError(
            f"the recipe reads data from {path}, outside the folders this machine lets recipes read "
            f"(data roots: {roots}); if that is right, allow it with --data-root {resolved} "
            "(a worker can train on a folder of its own with --data instead)"
        )


def check_options(
    factory: Callable[..., Any], options: Mapping[str, Any], spec: str, given: tuple[str, ...] = ()
) -> None:
    """ConfigError unless ``options`` are parameters ``factory`` declares, of the declared types
    (strict: no string for a number, no float for an integer), with every required one present
    (``given``: parameters the caller passes itself, e.g. a data source's path)."""
    params = {
        name: p
        for name, p in inspect.signature(factory).parameters.items()
        if name not in given and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    open_ended = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    unknown = sorted(set(options) - set(params) - set(given))
    if unknown and not open_ended:
        raise ConfigError(f"{spec} takes no options {unknown}; its options: {sorted(params)}")
    taken = sorted(set(options) & set(given))
    if taken:
        raise ConfigError(f"{spec}: options may not set {taken}; tessera passes them itself")
    missing = sorted(n for n, p in params.items() if p.default is p.empty and n not in options)
    if missing:
        raise ConfigError(f"{spec} needs the options {missing}")
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # an annotation that does not resolve: the factory checks its own values
        hints = {}
    for name, value in options.items():
        if name in hints and name in params:
            try:
                TypeAdapter(hints[name]).validate_python(value, strict=True)
            except ValidationError as exc:
                raise ConfigError(f"{spec} option {name} = {value!r}: {exc.errors()[0]['msg']}") from exc
