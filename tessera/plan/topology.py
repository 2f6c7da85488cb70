"""Topology files: the resource tree a collective pledges, read from TOML and validated.

    name = "home-lab"

    [hub]                         # optional: the hub's machine, which evaluates every version
    flops = 1.0e11

    [[group]]                     # exactly one group has no parent: the root; the hub sits there
    name = "home"
    kind = "site"                 # federation | site | cluster | machine

    [[group]]
    name = "desk"
    kind = "machine"
    parent = "home"
    link = { latency_ms = 0.2, bandwidth_mbit = 1000 }   # to the parent group

    [[node]]
    name = "desk-gpu"
    group = "desk"
    device = "rtx-4090"
    flops = 8.0e13                # measured matrix-multiply FLOP/s (``tessera probe``)
    memory_gb = 24
    link = { latency_ms = 0.01, bandwidth_mbit = 100000 }  # to its group
    availability = ["22:00-07:00 UTC"]                       # default: always
    owner = "alice"
    count = 1                     # identical nodes; more than one become desk-gpu-0, -1, ...

Every problem raises TopologyError naming the entry and the key to fix.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tessera.errors import ConfigError

GROUP_KINDS = ("federation", "site", "cluster", "machine")
MINUTES_PER_DAY = 24 * 60
DEFAULT_HUB_FLOPS = 1e11  # a CPU server
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})(?: UTC)?$")


class TopologyError(ConfigError):
    """A topology file is malformed: the message names the entry and key to fix."""


@dataclass(frozen=True)
class Link:
    """A link to the parent: one-way latency and bandwidth (same in both directions)."""

    latency_ms: float
    bandwidth_mbit: float

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1000.0

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_mbit * 1e6 / 8.0


@dataclass(frozen=True)
class Window:
    """A daily availability window in minutes after midnight UTC; it may wrap past midnight."""

    start: int
    end: int

    def covers(self, minute: int) -> bool:
        minute %= MINUTES_PER_DAY
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    @property
    def minutes(self) -> int:
        return (self.end - self.start) % MINUTES_PER_DAY or MINUTES_PER_DAY


ALWAYS = (Window(0, 0),)


@dataclass(frozen=True)
class Node:
    name: str
    group: str
    device: str
    flops: float
    memory_gb: float
    link: Link
    windows: tuple[Window, ...] = ALWAYS
    owner: str = ""

    def available(self, minute: int) -> bool:
        return any(w.covers(minute) for w in self.windows)

    @property
    def available_minutes(self) -> int:
        return sum(self.available(m) for m in range(MINUTES_PER_DAY))


@dataclass(frozen=True)
class Group:
    name: str
    kind: str
    parent: str | None
    link: Link | None  # None only at the root


@dataclass(frozen=True)
class Topology:
    name: str
    groups: dict[str, Group]
    nodes: dict[str, Node]
    description: str = ""
    hub_flops: float = DEFAULT_HUB_FLOPS
    root: str = field(init=False)

    def __post_init__(self) -> None:
        roots = [g.name for g in self.groups.values() if g.parent is None]
        if len(roots) != 1:
            raise TopologyError(f"exactly one group must have no parent (the root), found {roots}")
        object.__setattr__(self, "root", roots[0])

    def child_groups(self, group: str) -> list[Group]:
        return [g for g in self.groups.values() if g.parent == group]

    def child_nodes(self, group: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.group == group]

    def nodes_under(self, group: str) -> list[Node]:
        below = self.child_nodes(group)
        for child in self.child_groups(group):
            below.extend(self.nodes_under(child.name))
        return below

    def ancestors(self, group: str) -> Iterator[Group]:
        """The group itself, then each parent up to the root."""
        current: str | None = group
        while current is not None:
            g = self.groups[current]
            yield g
            current = g.parent

    def depth(self, group: str) -> int:
        return sum(1 for _ in self.ancestors(group)) - 1


def parse_window(text: str) -> Window:
    if text.strip().lower() == "always":
        return ALWAYS[0]
    match = WINDOW.match(text.strip())
    if match is None:
        raise TopologyError(f"availability window {text!r} must look like '22:00-07:00 UTC' or 'always'")
    h1, m1, h2, m2 = (int(x) for x in match.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise TopologyError(f"availability window {text!r} has an impossible time of day")
    return Window(h1 * 60 + m1, (h2 * 60 + m2) % MINUTES_PER_DAY)


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise TopologyError(f"{where}: name {value!r} must be 1-100 letters, digits, '.', '_' or '-'")
    return value


def _positive(where: str, table: dict[str, Any], key: str, default: float | None = None) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise TopologyError(f"{where}: {key} must be a positive number, got {value!r}")
    return float(value)


def _link(where: str, value: Any) -> Link:
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: link must be a table {{ latency_ms = ..., bandwidth_mbit = ... }}")
    unknown = set(value) - {"latency_ms", "bandwidth_mbit"}
    if unknown:
        raise TopologyError(f"{where}: unknown link keys {sorted(unknown)}; use latency_ms, bandwidth_mbit")
    latency = value.get("latency_ms")
    if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
        raise TopologyError(f"{where}: link.latency_ms must be a number >= 0, got {latency!r}")
    return Link(float(latency), _positive(f"{where} link", value, "bandwidth_mbit"))


def _check_keys(where: str, table: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise TopologyError(f"{where} must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise TopologyError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return table


GROUP_KEYS = {"name", "kind", "parent", "link"}
NODE_KEYS = {"name", "group", "device", "flops", "memory_gb", "link", "availability", "owner", "count"}


def _group(index: int, table: Any) -> Group:
    where = f"group #{index + 1}"
    table = _check_keys(where, table, GROUP_KEYS)
    name = _name(where, table.get("name"))
    where = f"group {name!r}"
    kind = table.get("kind", "site")
    if kind not in GROUP_KINDS:
        raise TopologyError(f"{where}: kind {kind!r} must be one of {list(GROUP_KINDS)}")
    parent = table.get("parent")
    if parent is None:
        if "link" in table:
            raise TopologyError(f"{where}: the root group has no link (the hub sits there)")
        return Group(name, kind, None, None)
    if "link" not in table:
        raise TopologyError(f"{where}: a link to parent {parent!r} is required")
    return Group(name, kind, _name(where, parent), _link(where, table["link"]))


def _nodes(index: int, table: Any) -> list[Node]:
    where = f"node #{index + 1}"
    table = _check_keys(where, table, NODE_KEYS)
    name = _name(where, table.get("name"))
    where = f"node {name!r}"
    windows = table.get("availability", ["always"])
    if not isinstance(windows, list) or not windows or not all(isinstance(w, str) for w in windows):
        raise TopologyError(f"{where}: availability must be a list of windows like ['22:00-07:00 UTC']")
    count = table.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100_000:
        raise TopologyError(f"{where}: count must be an integer from 1 to 100000, got {count!r}")
    for key in ("device", "owner"):
        if not isinstance(table.get(key, ""), str):
            raise TopologyError(f"{where}: {key} must be a string")
    node = Node(
        name=name,
        group=_name(where, table.get("group")),
        device=table.get("device", "unknown"),
        flops=_positive(where, table, "flops"),
        memory_gb=_positive(where, table, "memory_gb"),
        link=_link(where, table.get("link")),
        windows=tuple(parse_window(w) for w in windows),
        owner=table.get("owner", ""),
    )
    if count == 1:
        return [node]
    return [replace(node, name=f"{name}-{i}") for i in range(count)]


def _check_tree(groups: dict[str, Group], nodes: dict[str, Node]) -> None:
    for g in groups.values():
        if g.parent is not None and g.parent not in groups:
            raise TopologyError(f"group {g.name!r}: parent {g.parent!r} is not a group in this file")
    for n in nodes.values():
        if n.group not in groups:
            raise TopologyError(f"node {n.name!r}: group {n.group!r} is not a group in this file")
    for g in groups.values():
        seen = {g.name}
        parent = g.parent
        while parent is not None:
            if parent in seen:
                raise TopologyError(f"group {g.name!r}: its parents form a cycle through {parent!r}")
            seen.add(parent)
            parent = groups[parent].parent


def parse_topology(text: str) -> Topology:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"topology is not valid TOML: {exc}") from exc
    doc = _check_keys("topology", doc, {"name", "description", "hub", "group", "node"})
    hub = _check_keys("[hub]", doc.get("hub", {}), {"flops"})
    hub_flops = _positive("[hub]", hub, "flops", DEFAULT_HUB_FLOPS)
    groups: dict[str, Group] = {}
    for i, table in enumerate(doc.get("group", [])):
        group = _group(i, table)
        if group.name in groups:
            raise TopologyError(f"group {group.name!r} appears twice; names must be unique")
        groups[group.name] = group
    nodes: dict[str, Node] = {}
    for i, table in enumerate(doc.get("node", [])):
        for node in _nodes(i, table):
            if node.name in nodes or node.name in groups:
                raise TopologyError(f"node {node.name!r}: the name is taken; names must be unique")
            nodes[node.name] = node
    if not nodes:
        raise TopologyError("a topology needs at least one [[node]]")
    _check_tree(groups, nodes)
    topology = Topology(
        str(doc.get("name", "topology")), groups, nodes, str(doc.get("description", "")), hub_flops
    )
    empty = [g for g in groups if not topology.nodes_under(g)]
    if empty:
        raise TopologyError(f"groups {empty} hold no nodes; remove them or add nodes")
    return topology


def load_topology(path: Path) -> Topology:
    if not path.is_file():
        raise TopologyError(f"topology file {path} not found")
    return parse_topology(path.read_text())
