"""The package's rooms and the way its imports point (see docs/design.md, "Layout").

Every import counts: at module level, inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tessera"
pytestmark = pytest.mark.timeout(60)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def owner(name: str) -> str | None:
    """The package's module that ``name`` (a module, or a name inside one) is found in."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports() -> dict[str, frozenset[str]]:
    """The package's modules each module imports (itself left out)."""
    graph = {}
    for name, path in modules().items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = frozenset(
            t for t in (owner(x) for x in targets if x.startswith("tessera")) if t and t != name
        )
    return graph


def inside(name: str, rooms: Iterable[str]) -> bool:
    return any(name == room or name.startswith(room + ".") for room in rooms)


def offending(rooms: tuple[str, ...], allowed: tuple[str, ...]) -> list[str]:
    """``module -> target`` for each import out of ``rooms`` to a module not in ``allowed``."""
    return sorted(
        f"{name} -> {target}"
        for name, targets in imports().items()
        if inside(name, rooms)
        for target in targets
        if not inside(target, rooms + allowed)
    )


def test_the_layout_finds_the_rooms_it_checks() -> None:
    for room in ("tessera.api", "tessera.core", "tessera.data", "tessera.hub", "tessera.models",
                 "tessera.worker", "tessera.testing", "tessera.cli", "tessera.pool"):  # fmt: skip
        assert any(inside(m, [room]) for m in modules()), room
    assert "tessera.api.messages" in imports()["tessera.hub.app"]  # imports are seen


@pytest.mark.parametrize(
    ("rooms", "allowed"),
    [
        (("tessera.core",), ("tessera.errors",)),
        (("tessera.models",), ("tessera.core", "tessera.errors")),
        (("tessera.data",), ("tessera.core", "tessera.errors")),
        (("tessera.api",), ("tessera.errors", "tessera.names")),
        (("tessera.pool",), ("tessera.errors",)),
    ],
    ids=["core", "models", "data", "api", "pool"],
)
def test_lower_rooms_import_nothing_above_them(rooms: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    assert offending(rooms, allowed) == []


@pytest.mark.parametrize("room", ["tessera.worker", "tessera.api"])
def test_the_worker_and_the_wire_protocol_need_no_hub(room: str) -> None:
    """A volunteer's worker runs none of the server's code (nor the CLI's, nor the harnesses')."""
    server = ("tessera.hub", "tessera.cli", "tessera.demo", "tessera.testing")
    assert [
        f"{m} -> {t}" for m, ts in imports().items() if inside(m, [room]) for t in ts if inside(t, server)
    ] == []


def test_only_harnesses_and_the_demo_use_the_harnesses() -> None:
    users = ("tessera.testing", "tessera.demo")
    assert [
        f"{m} -> {t}"
        for m, ts in imports().items()
        if not inside(m, users)
        for t in ts
        if inside(t, ["tessera.testing"])
    ] == []


def test_no_import_cycles() -> None:
    """Strongly connected parts of the import graph (Tarjan's algorithm) have one module each."""
    graph, order, low, stack, on_stack, cycles = imports(), {}, {}, [], set(), []

    def visit(v: str) -> None:
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            part = []
            while (w := stack.pop()) != v:
                part.append(w)
                on_stack.discard(w)
            on_stack.discard(v)
            if part:
                cycles.append(sorted([v, *part]))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    assert cycles == []
