"""The planner: for each level of a topology choose how its parts train together, and predict
round time, utilization, bytes per link, memory fit and idle time from availability windows.

Bottom-up, each group first tries to train synchronously (one torchrun/DDP group: every step
all-reduces the gradients over the group's links); it does when the all-reduce keeps the
members at least ``target_utilization`` busy and their availability windows overlap. The units
left at the top (nodes and synchronous groups) train as DiLoCo workers of one hub at the root:
the planner picks the least lossy wire format and the smallest H reaching the target, sizes
each unit's inner steps so fast and slow units finish a round together, and moves a unit whose
link keeps it mostly idle even then to independent module training (merged later).

Classes (DESIGN.md): synchronous work is low-latency and exponent (members act together on one
interconnect every step); DiLoCo and module levels are high-latency and linear (add units, add
throughput, while the hub's links keep up).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from tessera.errors import ConfigError
from tessera.plan.cost import (
    bytes_per_hour,
    memory_per_parameter,
    ring_allreduce_s,
    step_s,
)
from tessera.plan.profile import WIRE_FORMATS, ModelProfile
from tessera.plan.topology import MINUTES_PER_DAY, Link, Node, Topology
from tessera.recipe import check_quorum, quorum_count

SYNC, DILOCO, MODULES, SINGLE = "sync", "diloco", "modules", "single"
CLASSES = {
    SYNC: ("low-latency", "exponent"),
    DILOCO: ("high-latency", "linear"),
    MODULES: ("high-latency", "linear"),
}
DEFAULT_WIRE_FORMATS = ("fp32", "bf16", "int8", "int4")  # codecs (tessera.core.codecs) by loss
ONE_WAY_TRIPS_PER_ROUND = 6  # see sync_s


@dataclass(frozen=True)
class PlanSettings:
    target_utilization: float = 0.9
    max_inner_steps: int = 1000
    efficiency: float = 0.3  # share of matmul FLOP/s a training step reaches (calibrate: probe)
    wire_formats: tuple[str, ...] = DEFAULT_WIRE_FORMATS  # the planner may choose, least lossy first
    min_unit_utilization: float = 0.5  # below this even at the chosen H: train a module instead
    min_window_overlap: float = 0.75  # a sync group's shared hours / its members' fewest hours

    def __post_init__(self) -> None:
        if not 0 < self.target_utilization < 1:
            raise ConfigError("plan target_utilization must be in (0, 1)")
        if self.max_inner_steps < 1:
            raise ConfigError("plan max_inner_steps must be at least 1")
        if not 0 < self.efficiency <= 1:
            raise ConfigError("plan efficiency must be in (0, 1]")
        unknown = [f for f in self.wire_formats if f not in WIRE_FORMATS]
        if unknown or not self.wire_formats:
            raise ConfigError(f"plan wire formats {unknown} unknown; choose from {sorted(WIRE_FORMATS)}")


@dataclass(frozen=True)
class Workload:
    """What the recipe asks of every step and round."""

    batch_size: int
    inner_steps: int  # the recipe's H: what a level would use without a plan
    quorum: int | float  # run.quorum: a count, or a fraction of the active workers
    eval_tokens: int  # held-out tokens the hub evaluates at every close

    def __post_init__(self) -> None:
        check_quorum("run.quorum", self.quorum)

    def quorum_at(self, up: int, planned: int) -> int:
        """The quorum while ``up`` of the ``planned`` DiLoCo units are available: an integer
        quorum, at most the units planned (a warning says when it asks for more); a fraction of
        the units up, which are the workers leasing (the hub's active workers), so any minute
        with one unit up trains. (When units go, the hub counts them for a round more; the
        planner's minutes leave that lag out.)"""
        if isinstance(self.quorum, int):
            return min(self.quorum, planned)
        return quorum_count(self.quorum, up)

    def quorum_text(self) -> str:
        return str(self.quorum) if isinstance(self.quorum, int) else f"{self.quorum:g} of the units up"


@dataclass(frozen=True)
class Unit:
    """What trains as one worker of the hub: a node, or a group training synchronously. The search
    leaves units as they are (it compares ``Sizing``s); the plan's units carry the chosen one."""

    name: str
    nodes: tuple[Node, ...]
    path: tuple[tuple[str, Link], ...]  # (link name, link) from this unit up to the root
    step_s: float  # wall time of one step, all-reduce included
    compute_s: float  # mean pure compute time of one step over its nodes
    tokens_per_step: int
    minutes: frozenset[int]  # minutes of the day when every node is available
    inner_steps: int = 0
    sync_s: float = 0.0
    strategy: str = DILOCO


@dataclass(frozen=True)
class Sizing:
    """One round tried: each unit's sync time and inner steps (by unit name), what they give."""

    sync_s: Mapping[str, float]
    inner_steps: Mapping[str, int]
    round_s: float
    utilization: float  # FLOP/s-weighted
    lowest: float  # the least busy unit's


@dataclass(frozen=True)
class Round:
    wire_format: str
    inner_steps: int  # of the fastest unit
    sizing: Sizing
    reached: bool  # the target utilization, with every unit above min_unit_utilization

    @property
    def round_s(self) -> float:
        return self.sizing.round_s

    @property
    def utilization(self) -> float:
        return self.sizing.utilization


@dataclass
class LevelPlan:
    group: str
    kind: str
    depth: int
    strategy: str
    latency_class: str
    work_class: str
    units: list[str] = field(default_factory=list)
    step_s: float | None = None
    allreduce_s: float | None = None
    utilization: float | None = None


@dataclass(frozen=True)
class UnitReport:
    name: str
    strategy: str
    nodes: list[str]
    step_s: float
    inner_steps: int
    compute_s: float
    sync_s: float
    utilization: float
    tokens_per_round: int
    available_h: float


@dataclass
class LinkReport:
    link: str  # named after the node or group at its lower end
    mbit: float
    bytes_per_hour: float = 0.0

    @property
    def load(self) -> float:
        return self.bytes_per_hour / (self.mbit * 1e6 / 8 * 3600)


@dataclass(frozen=True)
class NodeReport:
    name: str
    unit: str
    owner: str
    device: str
    memory_need_gb: float
    memory_gb: float
    fits: bool
    available_h: float
    idle_h: float


@dataclass(frozen=True)
class ModuleReport:
    module: str
    parameters: int
    work_class: str
    latency_class: str


@dataclass
class Plan:
    topology: str
    wire_format: str
    inner_steps: int  # H of the fastest unit
    round_s: float
    utilization: float
    hub_close_s: float
    levels: list[LevelPlan]
    units: list[UnitReport]
    links: list[LinkReport]
    nodes: list[NodeReport]
    modules: list[ModuleReport]
    sync_bytes: dict[str, int]  # one contribution (or version) in each wire format
    warnings: list[str]

    @property
    def worker_inner_steps(self) -> dict[str, int]:
        """What the hub gives each worker (by name) per lease."""
        return {u.name: u.inner_steps for u in self.units if u.strategy == DILOCO}

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        for row, link in zip(data["links"], self.links, strict=True):
            row["load"] = link.load
        data["worker_inner_steps"] = self.worker_inner_steps
        return data


class Planner:
    def __init__(
        self, topology: Topology, profile: ModelProfile, workload: Workload, settings: PlanSettings
    ) -> None:
        self.topology = topology
        self.profile = profile
        self.workload = workload
        self.settings = settings
        self.levels: dict[str, LevelPlan] = {}
        self.warnings: list[str] = []

    # --- units and the synchronous frontier ---------------------------------------------

    def node_step_s(self, node: Node) -> float:
        tokens = self.workload.batch_size * self.profile.tokens_per_sample
        return step_s(tokens * self.profile.flops_per_token, node.flops, self.settings.efficiency)

    def path_from(self, name: str, link: Link | None, group: str | None) -> tuple[tuple[str, Link], ...]:
        hops = [] if link is None else [(name, link)]
        if group is not None:
            hops.extend((g.name, g.link) for g in self.topology.ancestors(group) if g.link is not None)
        return tuple(hops)

    def node_unit(self, node: Node) -> Unit:
        t = self.node_step_s(node)
        minutes = frozenset(m for m in range(MINUTES_PER_DAY) if node.available(m))
        tokens = self.workload.batch_size * self.profile.tokens_per_sample
        return Unit(
            node.name, (node,), self.path_from(node.name, node.link, node.group), t, t, tokens, minutes
        )

    def frontier(self, group: str) -> list[Unit]:
        """The units of ``group``: one synchronous unit, or its members training apart."""
        members = [self.node_unit(n) for n in self.topology.child_nodes(group)]
        for child in self.topology.child_groups(group):
            members.extend(self.frontier(child.name))
        all_sync = all(
            self.levels[c.name].strategy in (SYNC, SINGLE) for c in self.topology.child_groups(group)
        )
        if len(members) == 1:
            self.record_level(group, SINGLE, members)
            return members
        merged = self.try_sync(group, members) if all_sync else None
        if merged is not None:
            return [merged]
        self.record_level(group, DILOCO, members)
        return members

    def try_sync(self, group: str, members: list[Unit]) -> Unit | None:
        links = [u.path[0][1] for u in members]  # each member's link to this group
        bandwidth = min(link.bytes_per_s for link in links)
        latency = max(link.latency_s for link in links)
        allreduce = ring_allreduce_s(self.profile.gradient_bytes, len(members), bandwidth, latency)
        wall = max(u.step_s for u in members) + allreduce
        utilization = sum(u.compute_s for u in members) / (len(members) * wall)
        shared = frozenset.intersection(*(u.minutes for u in members))
        fewest = min(len(u.minutes) for u in members)
        if len(shared) < self.settings.min_window_overlap * fewest:
            return None
        if utilization < self.settings.target_utilization and utilization < self.diloco_estimate(members):
            return None
        g = self.topology.groups[group]
        nodes = tuple(n for u in members for n in u.nodes)
        unit = Unit(
            name=group,
            nodes=nodes,
            path=self.path_from(group, g.link, g.parent),
            step_s=wall,
            compute_s=sum(u.compute_s for u in members) / len(members),
            tokens_per_step=sum(u.tokens_per_step for u in members),
            minutes=shared,
        )
        level = self.record_level(group, SYNC, [unit])
        level.step_s, level.allreduce_s, level.utilization = wall, allreduce, utilization
        return unit

    def diloco_estimate(self, members: Sequence[Unit]) -> float:
        """Utilization the members would reach as DiLoCo workers with the recipe's H (least lossy format)."""
        sync = self.sync_times(members, self.settings.wire_formats[0])
        fastest = min(members, key=lambda u: u.step_s)
        return self.size_round(members, self.workload.inner_steps, fastest, sync).utilization

    def record_level(self, group: str, strategy: str, units: Sequence[Unit]) -> LevelPlan:
        g = self.topology.groups[group]
        if strategy == SINGLE:
            child = next((self.levels[c.name] for c in self.topology.child_groups(group)), None)
            latency, work = (child.latency_class, child.work_class) if child else CLASSES[SYNC]
        else:
            latency, work = CLASSES[strategy]
        level = LevelPlan(group, g.kind, self.topology.depth(group), strategy, latency, work)
        level.units = [u.name for u in units]
        self.levels[group] = level
        return level

    # --- DiLoCo across the units --------------------------------------------------------

    def sync_s(self, unit: Unit, units: Sequence[Unit], wire_format: str) -> float:
        """Traffic of one round: six one-way trips (the reply to the last upload, which the hub sends
        after closing the round; the next lease request and reply; the blob request and reply;
        the upload) and the version down and contribution up. A link shared by k units carries
        k blobs each way in the same window."""
        nbytes = self.profile.sync_bytes(wire_format)
        latency = sum(link.latency_s for _, link in unit.path)
        if not unit.path:
            return 0.0
        slowest = max(self.sharing(name, units) * nbytes / link.bytes_per_s for name, link in unit.path)
        return ONE_WAY_TRIPS_PER_ROUND * latency + 2 * slowest

    def sync_times(self, units: Sequence[Unit], wire_format: str) -> dict[str, float]:
        return {u.name: self.sync_s(u, units, wire_format) for u in units}

    def sharing(self, link_name: str, units: Sequence[Unit]) -> int:
        return sum(1 for u in units if any(name == link_name for name, _ in u.path))

    def hub_close_s(self) -> float:
        forward_flops = self.profile.flops_per_token / 3  # training is forward (1) + backward (2)
        return step_s(
            self.workload.eval_tokens * forward_flops, self.topology.hub_flops, self.settings.efficiency
        )

    def size_round(
        self, units: Sequence[Unit], h_ref: int, fastest: Unit, sync: Mapping[str, float]
    ) -> Sizing:
        """Each unit's steps that end its round with the fastest unit's (which makes ``h_ref``)."""
        compute_end = h_ref * fastest.step_s + sync[fastest.name]
        steps = {u.name: max(1, math.floor((compute_end - sync[u.name]) / u.step_s + 1e-9)) for u in units}
        round_s = max(steps[u.name] * u.step_s + sync[u.name] for u in units) + self.hub_close_s()
        weights = [sum(n.flops for n in u.nodes) for u in units]
        busy = [steps[u.name] * u.compute_s / round_s for u in units]
        utilization = sum(w * b for w, b in zip(weights, busy, strict=True)) / sum(weights)
        return Sizing(sync, steps, round_s, utilization, min(busy))

    def good_enough(self, sizing: Sizing) -> bool:
        settings = self.settings
        slack = 1e-6  # float rounding at an exact boundary
        return (
            sizing.utilization + slack >= settings.target_utilization
            and sizing.lowest + slack >= settings.min_unit_utilization
        )

    def choose_round(self, units: Sequence[Unit]) -> Round:
        """The least lossy wire format and smallest H that keep the units busy enough (else the
        last format tried, with the H that comes closest)."""
        fastest = min(units, key=lambda u: u.step_s)
        for fmt in self.settings.wire_formats:
            sync = self.sync_times(units, fmt)
            h = self.smallest_h(units, fastest, sync)
            sizing = self.size_round(units, h, fastest, sync)
            if self.good_enough(sizing):
                return Round(fmt, h, sizing, True)
        return Round(fmt, h, sizing, False)

    def smallest_h(self, units: Sequence[Unit], fastest: Unit, sync: Mapping[str, float]) -> int:
        """Binary search over H (utilization grows with H); max_inner_steps if none is enough."""
        lo, hi = 1, self.settings.max_inner_steps
        while lo < hi:
            mid = (lo + hi) // 2
            if self.good_enough(self.size_round(units, mid, fastest, sync)):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def split_modules(self, units: list[Unit]) -> tuple[list[Unit], list[Unit], Round]:
        """While no round is good enough, the unit kept least busy trains an independent module:
        the DiLoCo units, the module units, and the round chosen for the DiLoCo units."""
        chosen, modules = self.choose_round(units), []
        while not chosen.reached and len(units) > 1:
            work = {u.name: chosen.sizing.inner_steps[u.name] * u.compute_s for u in units}
            worst = min(units, key=lambda u: work[u.name])
            if work[worst.name] / chosen.round_s >= self.settings.min_unit_utilization:
                break
            modules.append(worst)
            units = [u for u in units if u is not worst]
            chosen = self.choose_round(units)
        return units, modules, chosen

    # --- the plan ------------------------------------------------------------------------

    def plan(self) -> Plan:
        frontier = self.frontier(self.topology.root)
        diloco, modules, chosen = self.split_modules(list(frontier))
        fmt, h, round_s, util = chosen.wire_format, chosen.inner_steps, chosen.round_s, chosen.utilization
        if not chosen.reached:
            self.warnings.append(
                f"utilization {util:.0%} stays below the target {self.settings.target_utilization:.0%} "
                f"even with {fmt} and H = {h}"
            )
        sizing = chosen.sizing
        diloco = [
            replace(u, inner_steps=sizing.inner_steps[u.name], sync_s=sizing.sync_s[u.name]) for u in diloco
        ]
        planned = {u.name: u for u in diloco} | {u.name: replace(u, strategy=MODULES) for u in modules}
        units = [planned[u.name] for u in frontier]
        for u in units:
            if u.strategy == MODULES:
                self.mark_modules(u)
        if isinstance(self.workload.quorum, int) and self.workload.quorum > len(diloco):
            self.warnings.append(
                f"the recipe's quorum {self.workload.quorum} exceeds the {len(diloco)} DiLoCo workers "
                f"planned: set run.quorum = {len(diloco)}"
            )
        self.warn_about_waste(round_s, diloco)
        return Plan(
            topology=self.topology.name,
            wire_format=fmt,
            inner_steps=h,
            round_s=round_s,
            utilization=util,
            hub_close_s=self.hub_close_s(),
            levels=sorted(self.levels.values(), key=lambda lv: (lv.depth, lv.group)),
            units=[self.unit_report(u, round_s) for u in units],
            links=self.link_report(diloco, fmt, round_s),
            nodes=self.node_report(units, diloco),
            modules=self.module_report(),
            sync_bytes={fmt: self.profile.sync_bytes(fmt) for fmt in WIRE_FORMATS},
            warnings=self.warnings + self.memory_warnings(units),
        )

    def warn_about_waste(self, round_s: float, diloco: Sequence[Unit]) -> None:
        close = self.hub_close_s()
        if close > 0.1 * round_s:
            self.warnings.append(
                f"the hub's evaluation takes {close:.1f} s of each {round_s:.1f} s round: "
                "lower eval.batches or give the hub a faster device ([hub] flops)"
            )
        training = self.training_minutes(diloco)
        idle = [u.name for u in diloco if len(u.minutes - training) > 0.25 * len(u.minutes)]
        if idle:
            self.warnings.append(
                f"{', '.join(idle)} wait more than a quarter of their available hours for a quorum of "
                f"{self.workload.quorum_text()}: lower run.quorum or add nodes available at those hours"
            )

    def mark_modules(self, unit: Unit) -> None:
        if unit.name in self.levels:
            level = self.levels[unit.name]
            level.strategy, (level.latency_class, level.work_class) = MODULES, CLASSES[MODULES]
        self.warnings.append(
            f"{unit.name} trains an independent module (merged later): its link keeps it busy less than "
            f"{self.settings.min_unit_utilization:.0%} of a DiLoCo round"
        )

    def unit_report(self, u: Unit, round_s: float) -> UnitReport:
        diloco = u.strategy == DILOCO
        return UnitReport(
            name=u.name,
            strategy=u.strategy,
            nodes=[n.name for n in u.nodes],
            step_s=u.step_s,
            inner_steps=u.inner_steps,
            compute_s=u.inner_steps * u.step_s,
            sync_s=u.sync_s if diloco else 0.0,
            utilization=u.inner_steps * u.compute_s / round_s if diloco else 1.0,
            tokens_per_round=u.inner_steps * u.tokens_per_step,
            available_h=len(u.minutes) / 60,
        )

    def link_report(self, diloco: Sequence[Unit], fmt: str, round_s: float) -> list[LinkReport]:
        """Bytes per hour on every link: DiLoCo blobs both ways, plus synchronous all-reduces."""
        per_round = bytes_per_hour(2 * self.profile.sync_bytes(fmt), round_s)
        rows: dict[str, LinkReport] = {}
        for u in diloco:
            for name, link in u.path:
                rows.setdefault(name, LinkReport(name, link.bandwidth_mbit)).bytes_per_hour += per_round
        for level in self.levels.values():
            if level.strategy == SYNC:
                rows.update(self.allreduce_links(level))
        return sorted(rows.values(), key=lambda r: -r.bytes_per_hour)

    def allreduce_links(self, level: LevelPlan) -> dict[str, LinkReport]:
        """Each member link of a ring carries 2(n-1)/n of the gradient bytes per step."""
        links: dict[str, Link | None] = {n.name: n.link for n in self.topology.child_nodes(level.group)}
        links.update((g.name, g.link) for g in self.topology.child_groups(level.group))
        n = len(links)
        assert level.step_s is not None  # set with every synchronous level
        per_hour = bytes_per_hour(2 * (n - 1) / n * self.profile.gradient_bytes, level.step_s)
        return {name: LinkReport(name, link.bandwidth_mbit, per_hour) for name, link in links.items() if link}

    def node_report(self, units: Sequence[Unit], diloco: Sequence[Unit]) -> list[NodeReport]:
        training = self.training_minutes(diloco)
        rows = []
        for u in units:
            busy = u.minutes & training if u.strategy == DILOCO else u.minutes
            need = self.memory_need(u)
            for n in u.nodes:
                available = n.available_minutes
                rows.append(
                    NodeReport(
                        name=n.name,
                        unit=u.name,
                        owner=n.owner,
                        device=n.device,
                        memory_need_gb=need / 1e9,
                        memory_gb=n.memory_gb,
                        fits=need <= n.memory_gb * 1e9,
                        available_h=available / 60,
                        idle_h=(available - len(busy)) / 60,
                    )
                )
        return rows

    def training_minutes(self, diloco: Sequence[Unit]) -> frozenset[int]:
        """Minutes of the day in which at least a quorum of DiLoCo units is available."""
        up = [sum(m in u.minutes for u in diloco) for m in range(MINUTES_PER_DAY)]
        return frozenset(m for m, n in enumerate(up) if n >= self.workload.quorum_at(n, len(diloco)))

    def memory_need(self, unit: Unit) -> float:
        per_param = memory_per_parameter(diloco=unit.strategy != SYNC).total
        activations = self.workload.batch_size * self.profile.activation_bytes_per_sample
        return self.profile.trainable * per_param + activations

    def memory_warnings(self, units: Sequence[Unit]) -> list[str]:
        return [
            f"{n.name} needs {self.memory_need(u) / 1e9:.2f} GB but has {n.memory_gb} GB: "
            "lower train.batch_size or leave it out"
            for u in units
            for n in u.nodes
            if self.memory_need(u) > n.memory_gb * 1e9
        ]

    def module_report(self) -> list[ModuleReport]:
        """Every module of a dense model is updated by every token: exponent work."""
        root = self.levels[self.topology.root]
        return [
            ModuleReport(name, count, "exponent", root.latency_class)
            for name, count in self.profile.per_module.items()
        ]


def make_plan(
    topology: Topology, profile: ModelProfile, workload: Workload, settings: PlanSettings | None = None
) -> Plan:
    return Planner(topology, profile, workload, settings or PlanSettings()).plan()
