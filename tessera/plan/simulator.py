"""Discrete-event simulation of DiLoCo rounds over a planned topology.

Each DiLoCo unit of a plan downloads the version, trains its inner steps, uploads; the hub
closes a round on quorum (or on its deadline with at least one contribution), spends its
evaluation time, and opens the next round. A fractional quorum is that part of the active units,
those that started work in the round or the round before, as the hub counts its active workers
(``tessera.hub.rounds.quorum_of``). On top of the plan's steady state it models
stragglers (each unit's speed per round drawn from a log-normal), availability windows (a unit
that goes offline loses the round's work and returns when its window opens) and scheduled
joins and leaves. It predicts the wall time to N rounds.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass, field

from tessera.errors import ConfigError
from tessera.plan.planner import DILOCO, Plan
from tessera.plan.topology import MINUTES_PER_DAY, Topology
from tessera.recipe import check_quorum, quorum_count


@dataclass(frozen=True)
class ChurnEvent:
    at_s: float
    unit: str
    action: str  # "leave" or "join"

    def __post_init__(self) -> None:
        if self.action not in ("leave", "join"):
            raise ConfigError(f"churn action must be 'leave' or 'join', got {self.action!r}")


@dataclass(frozen=True)
class SimSettings:
    rounds: int
    quorum: int | float | None = None  # a count, a fraction of the active units; None: every unit
    straggler_sigma: float = 0.0  # log-normal sigma of a unit's per-round slowdown
    start_minute: int = 0  # time of day (UTC, minutes) at t = 0
    round_deadline_s: float | None = None
    windows: bool = True
    churn: tuple[ChurnEvent, ...] = ()
    seed: int = 0
    max_sim_s: float = 365 * 86400.0

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"simulate rounds must be at least 1, got {self.rounds}")
        if self.straggler_sigma < 0:
            raise ConfigError("straggler sigma cannot be negative")
        if self.quorum is not None:
            check_quorum("simulate quorum", self.quorum)


@dataclass
class SimUnit:
    name: str
    inner_steps: int
    step_s: float
    sync_s: float
    minutes: frozenset[int]
    online: bool = True
    epoch: int = 0  # bumped when in-flight work is lost
    working: bool = False
    done_round: int = -1
    started_round: int = -1  # the last round it started work in (the hub's lease)


@dataclass
class SimResult:
    rounds: int
    wall_s: float
    round_s: list[float] = field(default_factory=list)
    contributions: dict[str, int] = field(default_factory=dict)
    lost_work_s: float = 0.0
    complete: bool = True

    @property
    def mean_round_s(self) -> float:
        return sum(self.round_s) / len(self.round_s) if self.round_s else math.inf

    def to_json(self) -> dict[str, object]:
        return {**self.__dict__, "mean_round_s": self.mean_round_s}


class Simulation:
    def __init__(self, plan: Plan, topology: Topology, settings: SimSettings) -> None:
        self.settings = settings
        self.close_s = plan.hub_close_s
        self.units = {u.name: u for u in sim_units(plan, topology, settings.windows)}
        if not self.units:
            raise ConfigError("the plan has no DiLoCo units to simulate")
        self.rng = random.Random(settings.seed)
        self.queue: list[tuple[float, int, str, str, int]] = []
        self.seq = itertools.count()
        self.round = 0
        self.round_open = 0.0
        self.arrived: list[str] = []
        self.work_started: dict[str, float] = {}
        self.result = SimResult(rounds=0, wall_s=0.0, contributions={name: 0 for name in self.units})

    def push(self, at: float, kind: str, unit: str = "", epoch: int = 0) -> None:
        heapq.heappush(self.queue, (at, next(self.seq), kind, unit, epoch))

    def available(self, unit: SimUnit, t: float) -> bool:
        minute = (self.settings.start_minute + int(t // 60)) % MINUTES_PER_DAY
        return unit.online and minute in unit.minutes

    def next_flip(self, unit: SimUnit, t: float) -> float:
        """When the unit's availability window next opens or closes (inf: never)."""
        now = self.available(unit, t)
        start = math.floor(t / 60) * 60
        for k in range(1, MINUTES_PER_DAY + 1):
            if self.available(unit, start + k * 60) != now:
                return start + k * 60
        return math.inf

    def start(self, unit: SimUnit, t: float) -> None:
        if unit.working or unit.done_round >= self.round:
            return
        if not self.available(unit, t):
            if unit.online:
                self.push(self.next_flip(unit, t), "start", unit.name)
            return
        slowdown = (
            math.exp(self.rng.gauss(0.0, self.settings.straggler_sigma))
            if self.settings.straggler_sigma
            else 1
        )
        finish = t + unit.sync_s + unit.inner_steps * unit.step_s * slowdown
        window_end = self.next_flip(unit, t)
        unit.working, unit.started_round = True, self.round
        if finish > window_end:  # the window closes mid-round: the work is lost
            self.push(window_end, "lost", unit.name, unit.epoch)
        else:
            self.push(finish, "arrive", unit.name, unit.epoch)
        self.work_started[unit.name] = t

    def arrive(self, unit: SimUnit, t: float) -> None:
        unit.working = False
        unit.done_round = self.round
        self.arrived.append(unit.name)
        self.result.contributions[unit.name] += 1
        if len(self.arrived) >= self.quorum():
            self.close(t)

    def quorum(self) -> int:
        """An integer quorum (None: every unit), at most the units; or a fraction of the units
        active now: those that started work in this round or the one before."""
        quorum = self.settings.quorum
        if isinstance(quorum, float):
            active = sum(u.started_round >= self.round - 1 for u in self.units.values())
            return quorum_count(quorum, active)
        return min(quorum or len(self.units), len(self.units))

    def lose(self, unit: SimUnit, t: float) -> None:
        self.result.lost_work_s += t - self.work_started[unit.name]
        unit.working = False
        unit.epoch += 1
        self.push(self.next_flip(unit, t), "start", unit.name)

    def close(self, t: float) -> None:
        self.result.round_s.append(t + self.close_s - self.round_open)
        self.round += 1
        self.result.rounds = self.round
        self.arrived = []
        self.push(t + self.close_s, "open")

    def open(self, t: float) -> None:
        self.round_open = t
        if self.settings.round_deadline_s is not None:
            self.push(t + self.settings.round_deadline_s, "deadline", "", self.round)
        for unit in self.units.values():
            self.start(unit, t)

    def churn(self, event: ChurnEvent) -> None:
        if event.unit not in self.units:
            raise ConfigError(f"churn names unit {event.unit!r}, not a DiLoCo unit of the plan")
        self.push(event.at_s, event.action, event.unit)

    def handle(self, t: float, kind: str, name: str, epoch: int) -> None:
        unit = self.units.get(name)
        if kind == "open":
            self.open(t)
        elif kind == "deadline":
            if epoch == self.round and self.arrived:
                self.close(t)
        elif unit is None:
            return
        elif kind == "start":
            self.start(unit, t)
        elif kind in ("arrive", "lost") and epoch == unit.epoch:
            (self.arrive if kind == "arrive" else self.lose)(unit, t)
        elif kind == "leave":
            if unit.working:
                self.lose(unit, t)
            unit.online = False
        elif kind == "join":
            unit.online = True
            self.start(unit, t)

    def run(self) -> SimResult:
        for event in self.settings.churn:
            self.churn(event)
        self.push(0.0, "open")
        t = 0.0
        while self.queue and self.round < self.settings.rounds:
            t, _, kind, name, epoch = heapq.heappop(self.queue)
            if t > self.settings.max_sim_s:
                self.result.complete = False
                break
            self.handle(t, kind, name, epoch)
        self.result.complete = self.result.complete and self.round >= self.settings.rounds
        self.result.wall_s = t + (self.close_s if self.result.complete else 0.0)
        return self.result


def sim_units(plan: Plan, topology: Topology, windows: bool) -> list[SimUnit]:
    units = []
    for row in plan.units:
        if row.strategy != DILOCO:
            continue
        nodes = [topology.nodes[n] for n in row.nodes]
        minutes = frozenset(
            m for m in range(MINUTES_PER_DAY) if not windows or all(n.available(m) for n in nodes)
        )
        units.append(SimUnit(row.name, row.inner_steps, row.step_s, row.sync_s, minutes))
    return units


def simulate(plan: Plan, topology: Topology, settings: SimSettings) -> SimResult:
    return Simulation(plan, topology, settings).run()
