"""The pool over simulated days: 200 simulated workers, 8 runs of 5 owners, on a real hub.

The hub is the real ``HubService`` in this process (SQLite and blobs in a temporary folder, on
/dev/shm where there is one) on a simulated clock; the workers are a discrete-event simulation of
``tessera.worker.pool``: each is a pool member (``pool.join``) that asks ``pool.assign`` where to
work, registers in that run with its member id, leases, "trains" for its simulated step time x the
lease's H (the clock moves in the event queue; nothing is trained), stopping as the real trainer
does before a step that would end past the lease's ``stop_at`` (``tessera.worker.session.Pace``),
uploads a small random update with honest claims (tokens =
steps x batch x context, compute_s = the simulated seconds), asks ``assign`` again after each
contribution and moves if the hub says so. A worker told to wait for its round long-polls until
the run's round closes; one that ``assign`` keeps on a run whose lease says "wait until the window
reopens" (a window's last minute) would ask again at once until the window closes: here it rests
until then, counted as spin time. Downloading and uploading take each worker ``link_s``. The
deadline ticker runs every ``TICK_S`` simulated seconds.

The population (``--workers``, default 200): always-on machines, nights in Berlin, New York and
Tokyo, weekdays in London and Los Angeles, weekends; their owners' machines (atlas, borealis,
cirrus, ember) and volunteers' (providers of 10 machines each); step times of 60 to 120 s
(``--jitter``: 3% per lease), H = 50, so leases of 50 to 100 minutes, and the hub's
``pool.member_timeout_s`` is set above that (``--member-timeout-s``, 4 h: a member is seen only
when it asks ``assign``). The runs (``RUNS``): quorum 0.5 of the active workers, ``deadline_k`` = 2,
``max_staleness`` 5 (``--max-staleness``; rounds here last about a third of a lease), some with
``[run] workers`` caps, one with a priority; 100,000 rounds, so work stays queued. Owners start
from different balances (a history entry each in the ledger, in points of ``pflop_per_point``,
which is set to the PFLOP the pool computes in ``POINT_HOURS`` hours); borealis pledges 5 nodes to
cirrus's run and ember a budget of steps to borealis's. The simulation starts on Friday
2026-01-09 00:00 UTC, is measured for ``--days`` (default 2), and goes on for ``DRAIN_S`` more so
that leases crossing the end end as they would.

Churn is a second, fresh hub: one run (the same settings) served by pinned pool members, half of
them always on, half inside 06:00-10:00 UTC, so membership goes N/2 -> N -> N/2 until 14:00.

Cheaters are a third hub, since the pool's simulated workers do not train (a replay would catch
them all; that hub runs no replays): one run, 8 pinned pool members training for real with
``tessera.worker``'s session over an in-process client, 6 honest, one claiming 10x its tokens, one
uploading noise of its honest update's scale; in lockstep passes, the ticker's work (due rounds,
the hub's replays, ``tessera.hub.verify`` with its default settings) after each pass.

Figures (``bench/results/pool.json``): each is ``{"value": v, "target": "<comparison>", "met":
bool}`` except the cheaters' (counts, with ``cheaters_note``); ``details`` holds what they are
made of; ``command`` the command line.

- utilization: simulated seconds of leases whose contributions were accepted (from the lease to
  the end of its upload) / seconds inside the workers' windows, while work is queued (the share
  of samples at which some run wanted workers is in details) -- >= 0.95
- share_error_max: per owner, the share of worker-time on leases of its runs against the share
  of the pool the fair-share formula entitled it to, summed over samples every ``SAMPLE_S`` of
  ``Pool.view`` (the same inputs the hub places by); the largest |measured - entitled| /
  entitled over owners -- <= 0.10
- leases_in_window: of the leases of workers with windows, the share whose upload ended before
  the window open at the lease's start closed -- >= 0.99
- work_lost_at_window_end: inner steps leased to workers with windows and not counted because a
  window ended (the lease stopped at ``stop_at`` short of its H), over all steps leased to them
  -- < 0.02
- churn_round_time_ratio: the longest round of the churn hub open at some moment of the hour
  after a membership change (06:00 N/2 -> N, 10:00 N -> N/2) / the median round of 02:00-06:00
  (N/2 workers, steady) -- <= 1.2; ``details.churn`` adds the longest round of 02:00-14:00
  whatever its time and the steady rounds' own longest / median (the rounds' natural spread)
- cheaters, cheaters_detected, rounds_to_detect_max (rounds closed between a cheater's first
  upload and its being caught; 0: before any closed), cheater_credit_left_pflop (its providers'
  credit less corrections at the end)

    .venv/bin/python bench/pool.py --json bench/results/pool.json
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import torch
from sqlalchemy import select

from tessera.api.messages import Assignment, AssignRequest, ContributionMeta, PledgeRequest, PoolJoinRequest
from tessera.blobs import FileBlobStore
from tessera.core.tensors import from_bytes, to_bytes
from tessera.errors import TesseraError
from tessera.hub import queries
from tessera.hub.auth import Principal
from tessera.hub.config import HubConfig, PoolSettings
from tessera.hub.ledger import PFLOP
from tessera.hub.rounds import ADAPT_AFTER_ROUNDS, ADAPT_WINDOW, adaptive_deadline_s
from tessera.hub.service import HubService
from tessera.hub.state import State
from tessera.hub.tables import LedgerEntry, RoundRecord, Worker
from tessera.models.lm import build
from tessera.pool.windows import Availability, availability
from tessera.task import training_flops_per_token
from tessera.testing.adversary import corrupt
from tessera.testing.corpus import write_corpus
from tessera.testing.inprocess import InProcessClient
from tessera.trust import Trust
from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSettings

START = 1_767_916_800.0  # Friday 2026-01-09 00:00 UTC
HOUR_S, DAY_S = 3600.0, 86_400.0
H = 50  # inner steps of a lease
BATCH, CONTEXT = 8, 16
MODEL = {"context": CONTEXT, "d_model": 16, "n_layers": 1, "n_heads": 2}
STEP_S = (60.0, 120.0)  # a worker's seconds per inner step, drawn uniformly: leases of 50 to 100 min
LINK_S = (1.0, 6.0)  # a worker's seconds to download a version, and again to upload
WAIT_S = 10.0  # a worker's long poll (tessera.worker.session.WorkerSettings.wait_s)
TICK_S = 120.0  # the deadline ticker of the pool's hub (the real one ticks every second; deadlines
# close few rounds here, and a tick costs 8 runs' lookups); the churn hub's ticks every 30 s
CHURN_TICK_S = 30.0
SAMPLE_S = 300.0  # how often the pool's view is sampled for the fair-share figure
POINT_HOURS = 4.0  # pflop_per_point: the PFLOP the whole pool computes in this many hours
UPDATES = 8  # random updates per run, one drawn per contribution
BUDGET_STEPS = 4000  # ember's budget pledge to borealis-lm
CHURN_JOIN, CHURN_LEAVE, CHURN_END = 6.0, 10.0, 14.0  # hours after START
CHURN_WARMUP = 2.0  # hours before the churn hub's rounds count
CHURN_SETTLE = 1.0  # hours after a membership change whose open rounds are "during churn"
CHEAT_HONEST, CHEAT_ROUNDS, CHEAT_STEPS = 6, 6, 10  # the cheaters' hub: honest members, rounds, H
CHEAT_QUORUM = 4  # contributions that close one of its rounds
CHEAT_PASS_S = 600.0  # simulated seconds a lockstep pass takes
DRAIN_S = 2 * 3600.0  # workers go on this long after the measured time (leases crossing its end end normally)

# (owner, starting balance in points, its runs: (name, priority, [run] workers; 0: uncapped))
RUNS: tuple[tuple[str, float, tuple[tuple[str, float, int], ...]], ...] = (
    ("atlas", 2.0, (("atlas-lm", 0.0, 0), ("atlas-code", 1.0, 0), ("atlas-eval", 0.0, 8))),
    ("borealis", 1.0, (("borealis-lm", 0.0, 0), ("borealis-small", 0.0, 12))),
    ("cirrus", 0.0, (("cirrus-lm", 0.0, 0),)),
    ("dune", -1.0, (("dune-lm", 0.0, 10),)),
    ("ember", -2.0, (("ember-lm", 0.0, 0),)),
)
# (windows, share of the pool)
AVAILABILITY: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.45),
    (("22:00-07:00 Europe/Berlin",), 0.10),
    (("22:00-07:00 America/New_York",), 0.10),
    (("23:00-06:00 Asia/Tokyo",), 0.10),
    (("09:00-18:00 Europe/London mon-fri",), 0.10),
    (("08:00-17:00 America/Los_Angeles mon-fri",), 0.10),
    (("00:00-24:00 UTC sat,sun",), 0.05),
)
OWNED = {"atlas": 0.15, "borealis": 0.10, "cirrus": 0.05, "ember": 0.05}  # owners' share of the pool
VOLUNTEER_MACHINES = 10  # machines per volunteer provider

RECIPE = """
[run]
name = "{name}"
rounds = 100000
quorum = {quorum}
max_staleness = {max_staleness}
round_deadline_s = 7200
deadline_k = 2.0
lease_timeout_s = 14400
priority = {priority}
workers = {workers}

[model]
options = {{ context = 16, d_model = 16, n_layers = 1, n_heads = 2 }}

[data]
path = "{data}"
options = {{ context = 16, num_shards = 4 }}

[train]
inner_steps = {steps}
batch_size = {batch}
lr = 0.01

[eval]
batch_size = 4
batches = 1
"""


# --- the simulated world -----------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The command line's options."""

    workers: int = 200
    days: float = 2.0
    seed: int = 0
    max_staleness: int = 5
    jitter: float = 0.03
    member_timeout_s: float = 4 * HOUR_S


class SimClock:
    """The hub's clock: simulated unix seconds, moved by the event queue."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Events:
    """A discrete-event queue on ``clock``: callbacks run in time order (ties: in order added)."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._added = 0

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._added += 1
        heapq.heappush(self._heap, (max(when, self.clock.now), self._added, action))

    def run(self) -> int:
        """Run every event (events add events); how many ran."""
        ran = 0
        while self._heap:
            when, _, action = heapq.heappop(self._heap)
            self.clock.now = when
            action()
            ran += 1
        return ran


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    provider: str
    windows: tuple[str, ...]
    step_s: float
    link_s: float


@dataclass
class LeaseRecord:
    """One lease as the simulated worker lived it, and what the hub said of its upload."""

    worker: str
    windowed: bool
    run_id: str
    issued_at: float
    leased_steps: int
    steps: int
    stop_at: float | None
    window_end: float  # when the window open at issue closes (math.inf: none does)
    uploaded_at: float
    status: str = "training"  # accepted | rejected | refused (the hub raised) | training
    reason: str = ""

    @property
    def cut(self) -> bool:
        """Stopped at the window's end short of its H."""
        return self.steps < self.leased_steps


@dataclass
class Tally:
    """What the workers saw, beside the leases."""

    leases: list[LeaseRecord] = field(default_factory=list)
    assigns: Counter[str] = field(default_factory=Counter)
    parked_s: float = 0.0  # waiting for a round to close (contributed to it already)
    spin_s: float = 0.0  # in a window's last minutes: assign says work, lease says wait
    spins: int = 0
    moves: int = 0


class Hub:
    """The real hub on the simulated clock, and what the simulated workers share: principals,
    update bodies per run, workers waiting for a run's round to close."""

    def __init__(self, home: Path, clock: SimClock, options: Options, pflop_per_point: float = 1.0) -> None:
        data = write_corpus(home / "corpus")
        pool = PoolSettings(pflop_per_point=pflop_per_point, member_timeout_s=options.member_timeout_s)
        config = HubConfig(trust=Trust.of(data_roots=[data]), pool=pool)
        state = State(f"sqlite:///{home / 'hub.sqlite'}")
        self.service = HubService(state, FileBlobStore(home / "blobs"), clock, config)
        self.data, self.clock, self.options = data, clock, options
        token = self.service.providers.bootstrap_admin()
        self.admin = self.service.providers.principal(token)
        self.principals: dict[str, Principal] = {}
        self.bodies: dict[str, list[bytes]] = {}
        self.owner_of: dict[str, str] = {}
        self.name_of: dict[str, str] = {}
        self.parked: dict[str, list[PoolWorker]] = defaultdict(list)

    def provider(self, name: str) -> Principal:
        if name not in self.principals:
            created = self.service.providers.create_provider(self.admin, name, "person", False)
            self.principals[name] = self.service.providers.principal(created.token)
        return self.principals[name]

    def create_run(
        self,
        owner: str,
        name: str,
        priority: float,
        workers: int,
        rng: random.Random,
        steps: int = H,
        quorum: float | int = 0.5,
    ) -> str:
        text = RECIPE.format(
            name=name,
            priority=priority,
            workers=workers,
            data=self.data,
            steps=steps,
            quorum=quorum,
            batch=BATCH,
            max_staleness=self.options.max_staleness,
        )
        run_id = self.service.create_run(self.provider(owner), text).run_id
        self.owner_of[run_id], self.name_of[run_id] = owner, name
        self.bodies[run_id] = updates(self.service, run_id, rng)
        return run_id

    def closed(self, run_ids: list[str]) -> None:
        """Rounds closed on these runs: the workers waiting for them lease again."""
        for run_id in run_ids:
            waiting, self.parked[run_id] = self.parked[run_id], []
            for worker in waiting:
                worker.unpark()

    def close_ticker(self, events: Events, until: float, every_s: float) -> None:
        """The deadline ticker, every ``every_s`` until ``until``."""
        if self.service.close_due_rounds():
            self.closed(list(self.parked))
        if self.clock.now + every_s <= until:
            events.at(self.clock.now + every_s, lambda: self.close_ticker(events, until, every_s))


def updates(service: HubService, run_id: str, rng: random.Random) -> list[bytes]:
    """Small random updates of the run's shape (so the model does not drift over many rounds)."""
    with service.state.reading() as s:
        sha = queries.version(s, run_id, 0).blob_sha
    params = {k: v for k, v in from_bytes(service.store.get(sha)).items() if v.is_floating_point()}
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    return [
        to_bytes({k: torch.randn(v.shape, generator=gen) * 1e-4 for k, v in params.items()})
        for _ in range(UPDATES)
    ]


# --- a simulated pool worker -------------------------------------------------------------


class PoolWorker:
    """``tessera.worker.pool.PoolLoop`` with its ``WorkLoop``, on simulated time: assign, register
    (once per run), lease, train, upload, assign again."""

    def __init__(self, spec: WorkerSpec, hub: Hub, events: Events, tally: Tally, until: float) -> None:
        self.spec, self.hub, self.events, self.tally, self.until = spec, hub, events, tally, until
        self.who = hub.provider(spec.provider)
        self.windows: Availability = availability(spec.windows)
        self.rng = random.Random(f"{hub.options.seed}-{spec.name}")
        self.member_id = ""
        self.run_id: str | None = None
        self.worker_ids: dict[str, str] = {}
        self.parked_at: float | None = None

    @property
    def service(self) -> HubService:
        return self.hub.service

    def join(self, pinned_run_id: str | None = None) -> None:
        request = PoolJoinRequest(
            name=self.spec.name, windows=list(self.spec.windows), pinned_run_id=pinned_run_id
        )
        self.member_id = self.service.pool.join(self.who, request).member_id
        self.events.at(self.hub.clock.now, self.ask)

    def ask(self) -> None:
        """Where to work now (PoolLoop.run), unless the simulation is over."""
        if self.hub.clock.now >= self.until:
            return
        self.follow(self.assign())

    def assign(self) -> Assignment:
        assignment = self.service.pool.assign(self.who, self.member_id, AssignRequest())
        self.tally.assigns[assignment.status] += 1
        return assignment

    def follow(self, assignment: Assignment) -> None:
        if assignment.status == "idle" or assignment.run_id is None:
            self.run_id = None
            self.events.at(self.hub.clock.now + assignment.retry_after_s, self.ask)
            return
        if assignment.run_id != self.run_id:
            self.tally.moves += self.run_id is not None
            self.run_id = assignment.run_id
            if assignment.worker_id is not None:
                self.worker_ids.setdefault(self.run_id, assignment.worker_id)
            if self.run_id not in self.worker_ids:
                reply = self.service.register(self.run_id, self.who, self.spec.name, member_id=self.member_id)
                self.worker_ids[self.run_id] = reply.worker_id
        self.lease()

    def lease(self) -> None:
        """WorkLoop.rounds: lease; train on a lease; on a wait, long-poll or go back to the pool."""
        if self.hub.clock.now >= self.until or self.run_id is None:
            return
        run_id = self.run_id
        reply = self.service.try_lease(run_id, self.who, self.worker_ids[run_id])
        if reply.status == "done":
            self.follow(self.assign())
        elif reply.lease is not None:
            self.train(run_id, reply.lease.lease_id, reply.lease.inner_steps, reply.lease.stop_at)
        elif reply.retry_after_s <= WAIT_S:  # the round has our contribution: wait for its close
            self.parked_at = self.hub.clock.now
            self.hub.parked[run_id].append(self)
        else:  # a window closes (or closed): ask the pool (PoolLoop._moved)
            self.leave_or_spin(self.assign())

    def leave_or_spin(self, assignment: Assignment) -> None:
        """The real worker asks again at once while assign says "this run" and lease says "wait
        until the window reopens": in the window's last minutes it spins until the window closes.
        Here it rests until then (counted as spin time)."""
        if assignment.status == "work" and assignment.run_id == self.run_id:
            end = self.windows.open_until(self.hub.clock.now)
            if end is not None and not math.isinf(end):
                self.tally.spins += 1
                self.tally.spin_s += end - self.hub.clock.now
                self.events.at(end, self.ask)
                return
        self.follow(assignment)

    def unpark(self) -> None:
        if self.parked_at is not None:
            self.tally.parked_s += self.hub.clock.now - self.parked_at
            self.parked_at = None
            self.events.at(self.hub.clock.now, self.lease)

    def train(self, run_id: str, lease_id: str, leased: int, stop_at: float | None) -> None:
        """The lease's steps: download, train (stopping before a step that would end past
        ``stop_at``, as ``tessera.worker.session.Pace`` does), upload; the upload is an event at
        its end."""
        now = self.hub.clock.now
        step_s = self.spec.step_s * max(0.5, self.rng.gauss(1.0, self.hub.options.jitter))
        start = now + self.spec.link_s
        steps = leased
        if stop_at is not None:
            steps = min(leased, max(1, math.floor((stop_at - start) / step_s)))
        end = self.windows.open_until(now)
        record = LeaseRecord(
            worker=self.spec.name,
            windowed=bool(self.spec.windows),
            run_id=run_id,
            issued_at=now,
            leased_steps=leased,
            steps=steps,
            stop_at=stop_at,
            window_end=math.inf if end is None else end,
            uploaded_at=start + steps * step_s + self.spec.link_s,
        )
        self.tally.leases.append(record)
        self.events.at(record.uploaded_at, lambda: self.upload(record, lease_id, steps * step_s))

    def upload(self, record: LeaseRecord, lease_id: str, compute_s: float) -> None:
        """Submit with honest claims, close the round if due (as the route does after answering),
        then ask the pool where to go next."""
        run_id = record.run_id
        meta = ContributionMeta(
            contribution_id=lease_id,
            lease_id=lease_id,
            worker_id=self.worker_ids[run_id],
            tokens=record.steps * BATCH * CONTEXT,
            steps=record.steps,
            train_loss=4.0,
            compute_s=compute_s,
        )
        body = self.rng.choice(self.hub.bodies[run_id])
        try:
            reply = self.service.submit(run_id, self.who, meta, body)
            record.status, record.reason = reply.status, reply.reason or ""
        except TesseraError as exc:
            record.status, record.reason = "refused", f"{type(exc).__name__}: {exc}"
        if self.service.close_if_due(run_id):
            self.hub.closed([run_id])
        self.ask()


# --- the main simulation -----------------------------------------------------------------


def population(n: int, rng: random.Random) -> list[WorkerSpec]:
    """``n`` machines: windows by ``AVAILABILITY``, owners' by ``OWNED``, the rest volunteers'."""
    windows = [w for w, share in AVAILABILITY for _ in range(round(share * n))]
    windows = (windows + [()] * n)[:n]
    rng.shuffle(windows)
    providers = [p for p, share in OWNED.items() for _ in range(round(share * n))]
    providers += [f"volunteer-{i // VOLUNTEER_MACHINES:02d}" for i in range(n - len(providers))]
    return [
        WorkerSpec(f"w{i:03d}", providers[i], windows[i], rng.uniform(*STEP_S), rng.uniform(*LINK_S))
        for i in range(n)
    ]


def flops_per_token() -> float:
    return training_flops_per_token(build(**MODEL))


def pflop_per_point(specs: list[WorkerSpec]) -> float:
    """The PFLOP the whole pool computes in POINT_HOURS hours (all machines on)."""
    steps = sum(POINT_HOURS * HOUR_S / s.step_s for s in specs)
    return steps * BATCH * CONTEXT * flops_per_token() / PFLOP


def seed_balance(hub: Hub, owner: str, run_id: str, pflop: float) -> None:
    """An owner's history before the simulation: one ledger entry, as a committed round writes
    them (a credit if positive, a usage debit if negative), an hour before the start."""
    if pflop == 0:
        return
    tokens = max(1, round(abs(pflop) * PFLOP / flops_per_token()))
    with hub.service.state.transaction() as s:
        s.add(
            LedgerEntry(
                provider_id=hub.provider(owner).provider_id,
                run_id=run_id,
                contribution_id=f"history-{owner}",
                version_id="history",
                kind="compute" if pflop > 0 else "usage",
                tokens=tokens,
                flops_per_token=flops_per_token(),
                amount=pflop,
                created_at=START - HOUR_S,
            )
        )


@dataclass
class Sample:
    at: float
    capacity: int
    entitled: dict[str, float]  # per owner
    placed: dict[str, int]  # per owner
    wanting: bool  # some run wanted workers


def sampler(hub: Hub, events: Events, samples: list[Sample], until: float) -> None:
    """The pool's view (Pool.view: the inputs the hub places by), every SAMPLE_S until ``until``."""
    service = hub.service
    with service.state.reading() as s:
        view = service.pool.view(s, hub.clock.now)
    entitled: dict[str, float] = defaultdict(float)
    placed: dict[str, int] = defaultdict(int)
    for run_id, standing in view.standings.items():
        owner = hub.owner_of.get(run_id, "?")
        entitled[owner] += standing.entitled
        placed[owner] += standing.current
    wanting = any(st.wants() for st in view.standings.values())
    samples.append(Sample(hub.clock.now, view.capacity, dict(entitled), dict(placed), wanting))
    if hub.clock.now + SAMPLE_S < until:
        events.at(hub.clock.now + SAMPLE_S, lambda: sampler(hub, events, samples, until))


Figures = tuple[dict[str, object], dict[str, object]]  # the figures, and what they are made of


def simulate_pool(home: Path, options: Options) -> Figures:
    """The pool's hub, runs, pledges and workers; the simulation from START for ``days``."""
    rng = random.Random(options.seed)
    specs = population(options.workers, rng)
    ppp = pflop_per_point(specs)
    clock = SimClock(START)
    hub = Hub(home, clock, options, ppp)
    until = START + options.days * DAY_S
    runs = {}
    for owner, points, owned in RUNS:
        for name, priority, cap in owned:
            runs[name] = hub.create_run(owner, name, priority, cap, rng)
        seed_balance(hub, owner, runs[owned[0][0]], points * ppp)
    make_pledges(hub, runs)
    events, tally, samples = Events(clock), Tally(), list[Sample]()
    for spec in specs:
        PoolWorker(spec, hub, events, tally, until + DRAIN_S).join()
    hub.close_ticker(events, until + 2 * DRAIN_S, TICK_S)
    sampler(hub, events, samples, until)
    started = time.perf_counter()
    ran = events.run()
    wall_s = time.perf_counter() - started
    figures, details = pool_figures(hub, specs, tally, samples, until)
    details["simulation"] = {
        "events": ran,
        "wall_s": round(wall_s, 1),
        "options": asdict(options),
        "pflop_per_point": ppp,
        "pledges": pledge_report(hub),
        "rounds": rounds_report(hub),
    }
    hub.service.state.close()
    return figures, details


def make_pledges(hub: Hub, runs: dict[str, str]) -> None:
    """borealis: 5 nodes to cirrus-lm (the first 5 of its machines to join take it); ember: a
    budget of steps to borealis-lm (all its machines serve it first, until it is delivered)."""
    pledges = hub.service.pledges
    pledges.create(
        hub.provider("borealis"), PledgeRequest(target="run", target_id=runs["cirrus-lm"], nodes=5)
    )
    pledges.create(
        hub.provider("ember"), PledgeRequest(target="run", target_id=runs["borealis-lm"], steps=BUDGET_STEPS)
    )


def pledge_report(hub: Hub) -> list[dict[str, object]]:
    return [
        {
            "provider": p.provider,
            "kind": p.kind,
            "target": hub.name_of.get(p.target_id or "", p.target_id),
            "nodes": p.nodes,
            "steps": p.steps,
            "status": p.status,
            "delivered_steps": p.delivered_steps,
        }
        for p in hub.service.pledges.of(hub.admin)
    ]


def rounds_report(hub: Hub) -> dict[str, object]:
    """Per run: rounds closed, by reason, and their median length."""
    with hub.service.state.reading() as s:
        rows = s.execute(
            select(
                RoundRecord.run_id, RoundRecord.started_at, RoundRecord.closed_at, RoundRecord.close_reason
            )
        ).all()
    report: dict[str, object] = {}
    for run_id, name in hub.name_of.items():
        mine = [r for r in rows if r.run_id == run_id and r.closed_at is not None]
        reasons = Counter(r.close_reason for r in mine)
        lengths = [r.closed_at - r.started_at for r in mine]
        report[name] = {
            "closed": len(mine),
            "reasons": dict(reasons),
            "median_s": round(statistics.median(lengths), 1) if lengths else None,
        }
    return report


# --- the figures of the main simulation --------------------------------------------------


def overlap(lo: float, hi: float, start: float, end: float) -> float:
    return max(0.0, min(hi, end) - max(lo, start))


def figure(value: float | None, target: str) -> dict[str, object]:
    """A figure with its target, and whether it meets it."""
    op, bound = target.split()
    met = None
    if value is not None:
        met = {">=": value >= float(bound), "<=": value <= float(bound), "<": value < float(bound)}[op]
    return {"value": None if value is None else round(value, 4), "target": target, "met": met}


def pool_figures(
    hub: Hub, specs: list[WorkerSpec], tally: Tally, samples: list[Sample], until: float
) -> Figures:
    leases = [le for le in tally.leases if le.issued_at < until]  # the rest: after the measured time
    available = sum(availability(s.windows).open_seconds(START, until) for s in specs)
    by_status: dict[str, float] = defaultdict(float)
    for le in leases:
        by_status[le.status] += overlap(le.issued_at, le.uploaded_at, START, until)
    windowed = [le for le in leases if le.windowed]
    in_window = sum(le.uploaded_at <= le.window_end for le in windowed)
    leased_steps = sum(le.leased_steps for le in windowed)
    lost = sum(le.leased_steps - (le.steps if le.status == "accepted" else 0) for le in windowed if le.cut)
    shares = share_errors(hub, leases, samples, until)
    figures: dict[str, object] = {
        "utilization": figure(by_status["accepted"] / available, ">= 0.95"),
        "share_error_max": figure(max(o["error"] for o in shares.values()), "<= 0.10"),
        "leases_in_window": figure(in_window / len(windowed) if windowed else None, ">= 0.99"),
        "work_lost_at_window_end": figure(lost / leased_steps if leased_steps else None, "< 0.02"),
    }
    details = {
        "worker_s_available": round(available),
        "worker_s_on_leases": {k: round(v) for k, v in by_status.items()},
        "worker_s_parked_for_a_close": round(tally.parked_s),
        "worker_s_spinning_at_window_end": round(tally.spin_s),
        "spins_at_window_end": tally.spins,
        "samples_with_work_queued": sum(s.wanting for s in samples) / len(samples),
        **lease_details(leases, windowed, in_window),
        "assigns": dict(tally.assigns),
        "moves": tally.moves,
        "owners": shares,
    }
    return figures, details


def lease_details(
    leases: list[LeaseRecord], windowed: list[LeaseRecord], in_window: int
) -> dict[str, object]:
    """How many leases, what became of them, and when (UTC hour of the upload) those not
    accepted were uploaded."""
    refused = [le for le in leases if le.status not in ("accepted", "training")]
    hours = Counter(int((le.uploaded_at - START) // HOUR_S) for le in refused)
    return {
        "leases": len(leases),
        "leases_by_status": dict(Counter(le.status for le in leases)),
        "not_accepted_reasons": dict(Counter(le.reason.split(":")[0] for le in refused)),
        "not_accepted_by_upload_hour": dict(sorted(hours.items())),
        "windowed_leases": len(windowed),
        "windowed_leases_cut_at_window_end": sum(le.cut for le in windowed),
        "windowed_uploads_after_window_end": len(windowed) - in_window,
    }


def share_errors(
    hub: Hub, leases: list[LeaseRecord], samples: list[Sample], until: float
) -> dict[str, dict[str, float]]:
    """Per owner: measured share of worker-time on its runs' leases, the share entitled (summed
    over samples), the share placed (members on its runs in the view), and the relative error."""
    measured: dict[str, float] = defaultdict(float)
    for le in leases:
        measured[hub.owner_of[le.run_id]] += overlap(le.issued_at, le.uploaded_at, START, until)
    entitled: dict[str, float] = defaultdict(float)
    placed: dict[str, float] = defaultdict(float)
    for sample in samples:
        for owner, n in sample.entitled.items():
            entitled[owner] += n
        for owner, k in sample.placed.items():
            placed[owner] += k
    totals = (sum(measured.values()), sum(entitled.values()), sum(placed.values()))
    report = {}
    for owner, _, _ in RUNS:
        m, e, p = measured[owner] / totals[0], entitled[owner] / totals[1], placed[owner] / totals[2]
        report[owner] = {
            "measured": round(m, 4),
            "entitled": round(e, 4),
            "placed": round(p, 4),
            "error": round(abs(m - e) / e, 4),
        }
    return report


# --- churn: membership N/2 -> N -> N/2 on one run ----------------------------------------


def simulate_churn(home: Path, options: Options) -> Figures:
    """One run served by pinned pool workers: half always on, half inside CHURN_JOIN to
    CHURN_LEAVE (UTC hours), to CHURN_END."""
    rng = random.Random(options.seed + 1)
    clock = SimClock(START)
    hub = Hub(home, clock, options)
    run_id = hub.create_run("churn-owner", "churn", 0.0, 0, rng)
    window = f"{CHURN_JOIN:02.0f}:00-{CHURN_LEAVE:02.0f}:00 UTC"
    until = START + CHURN_END * HOUR_S
    events, tally = Events(clock), Tally()
    for i in range(options.workers):
        provider = f"crowd-{i // VOLUNTEER_MACHINES:02d}"
        windows = (window,) if i % 2 else ()
        spec = WorkerSpec(f"c{i:03d}", provider, windows, rng.uniform(*STEP_S), rng.uniform(*LINK_S))
        PoolWorker(spec, hub, events, tally, until).join(pinned_run_id=run_id)
    hub.close_ticker(events, until, CHURN_TICK_S)
    events.run()
    rounds = churn_rounds(hub, run_id)
    hub.service.state.close()
    return churn_figures(rounds, tally)


@dataclass(frozen=True)
class ChurnRound:
    started_h: float  # hours after START
    length_s: float
    reason: str
    accepted: int
    rejected: int
    active: int  # the fractional quorum's base at the round's close (queries.active_workers)
    deadline_s: float  # the adaptive deadline the hub computes for it (tessera.hub.rounds)

    HEADER = "started_h length_s reason accepted rejected active deadline_s"

    def row(self) -> str:
        return (
            f"{self.started_h:.2f} {self.length_s:.0f} {self.reason} {self.accepted} {self.rejected} "
            f"{self.active} {self.deadline_s:.0f}"
        )

    @property
    def ended_h(self) -> float:
        return self.started_h + self.length_s / HOUR_S


def churn_rounds(hub: Hub, run_id: str) -> list[ChurnRound]:
    """The run's closed rounds, with the quorum base and adaptive deadline the hub read."""
    recipe = hub.service.runtime(run_id).recipe
    settings = recipe.run
    found = []
    with hub.service.state.reading() as s:
        for r in queries.rounds(s, run_id):
            if r.closed_at is None:
                continue
            arrivals = queries.arrival_times(
                s, run_id, r.number - ADAPT_WINDOW, r.number, recipe.train.inner_steps
            )
            adaptive = r.number >= ADAPT_AFTER_ROUNDS
            deadline = settings.round_deadline_s
            if adaptive:
                deadline = adaptive_deadline_s(arrivals, settings.deadline_k, deadline)
            found.append(
                ChurnRound(
                    started_h=(r.started_at - START) / HOUR_S,
                    length_s=r.closed_at - r.started_at,
                    reason=r.close_reason or "",
                    accepted=r.accepted,
                    rejected=r.rejected,
                    active=queries.active_workers(s, run_id, r.number, r.closed_at),
                    deadline_s=deadline,
                )
            )
    return found


def overlaps(r: ChurnRound, from_h: float, to_h: float) -> bool:
    return r.started_h < to_h and r.ended_h > from_h


def churn_figures(rounds: list[ChurnRound], tally: Tally) -> Figures:
    """Rounds from CHURN_WARMUP that closed by CHURN_END; the worst of those open in the
    CHURN_SETTLE hours after a membership change against the median of the steady half before
    the others join."""
    counted = [r for r in rounds if r.started_h >= CHURN_WARMUP and r.ended_h <= CHURN_END]
    phases = {
        "half_before": (CHURN_WARMUP, CHURN_JOIN),
        "full": (CHURN_JOIN + 1, CHURN_LEAVE),
        "half_after": (CHURN_LEAVE + 1, CHURN_END),
    }
    medians = {}
    for name, (lo, hi) in phases.items():
        lengths = [r.length_s for r in counted if lo <= r.started_h < hi]
        medians[name] = round(statistics.median(lengths), 1) if lengths else None
    steady_rounds = [r.length_s for r in counted if r.started_h < CHURN_JOIN]
    steady = statistics.median(steady_rounds)
    during = [r for r in counted if any(overlaps(r, h, h + CHURN_SETTLE) for h in (CHURN_JOIN, CHURN_LEAVE))]
    worst = max(during, key=lambda r: r.length_s)
    longest = max(counted, key=lambda r: r.length_s)
    figures: dict[str, object] = {"churn_round_time_ratio": figure(worst.length_s / steady, "<= 1.2")}
    details = {
        "steady_round_s": round(steady, 1),
        "worst_round_s": round(worst.length_s, 1),
        "worst_round_started_h": round(worst.started_h, 2),
        "rounds_during_churn": len(during),
        "longest_round_s_any_time": round(longest.length_s, 1),
        "longest_round_started_h": round(longest.started_h, 2),
        "steady_longest_over_median": round(max(steady_rounds) / steady, 3),
        "median_round_s_by_phase": medians,
        "close_reasons": dict(Counter(r.reason for r in counted)),
        "leases_by_status": dict(Counter(le.status for le in tally.leases)),
        "rounds": [ChurnRound.HEADER] + [r.row() for r in counted],
    }
    return figures, details


# --- cheaters: claims checked by the hub's replays --------------------------------------


class Cheat(Enum):
    HONEST = "honest"
    TOKENS_10X = "tokens_10x"  # trains honestly, claims 10x the tokens
    RANDOM_DELTA = "random_delta"  # uploads noise of its honest update's scale, honest claims


class TrainingMember:
    """A pool member pinned to the cheaters' run that trains for real (``tessera.worker``'s
    session over an in-process client) and cheats as ``cheat`` says."""

    def __init__(self, hub: Hub, run_id: str, name: str, cheat: Cheat, home: Path) -> None:
        self.hub, self.run_id, self.cheat, self.name = hub, run_id, cheat, name
        self.who = hub.provider(name)
        token = hub.service.providers.create_token(hub.admin, self.who.provider_id, "bench").token
        request = PoolJoinRequest(name=name, pinned_run_id=run_id)
        member_id = hub.service.pool.join(self.who, request).member_id
        placed = hub.service.pool.assign(self.who, member_id, AssignRequest())
        if placed.run_id != run_id:
            raise RuntimeError(f"the pool placed {name} elsewhere: {placed}")
        settings = WorkerSettings(home / name, name=name, trust=hub.service.trust, member_id=member_id)
        self.loop = WorkLoop(InProcessClient(hub.service, token, run_id), settings)
        self.generator = torch.Generator().manual_seed(len(name))
        self.first_upload: int | None = None  # rounds closed when it first uploaded
        self.caught: int | None = None  # rounds closed when it was caught

    @property
    def worker_id(self) -> str:
        return self.loop.session.identity.worker_id

    def rounds_done(self) -> int:
        return self.hub.service.status(self.run_id, self.hub.admin).rounds_done

    def work(self) -> None:
        """Lease, train, upload once (nothing if it has contributed to this round or was caught)."""
        session = self.loop.session
        try:
            grant = session.client.lease(self.worker_id).lease
            if grant is None:
                return
            session.load(session.tensors_of(grant), grant)
            base = session.trained()
            meta, body = session.contribution(grant, base, session.train(grant))
            if self.first_upload is None:
                self.first_upload = self.rounds_done()
            session.client.submit(*self.cheated(meta, body))
        except TesseraError:  # refused, or caught
            pass

    def cheated(self, meta: ContributionMeta, body: bytes) -> tuple[ContributionMeta, bytes]:
        if self.cheat is Cheat.TOKENS_10X:
            return meta.model_copy(update={"tokens": 10 * meta.tokens}), body
        if self.cheat is Cheat.RANDOM_DELTA:
            return meta, to_bytes(corrupt(from_bytes(body), "noise", self.generator))
        return meta, body


def simulate_cheaters(home: Path, options: Options) -> Figures:
    """CHEAT_HONEST honest members and one of each cheat, on one run, in lockstep: each pass every
    member leases, trains and uploads once; then the ticker's work (due rounds closed, pending
    replays run), until CHEAT_ROUNDS rounds closed."""
    clock = SimClock(START)
    hub = Hub(home, clock, options)
    cheats = [Cheat.HONEST] * CHEAT_HONEST + [Cheat.TOKENS_10X, Cheat.RANDOM_DELTA]
    rng = random.Random(options.seed)
    run_id = hub.create_run("cheat-owner", "cheaters", 0.0, len(cheats), rng, CHEAT_STEPS, CHEAT_QUORUM)
    members = [
        TrainingMember(hub, run_id, f"{c.value}-{i}", c, home / "workers") for i, c in enumerate(cheats)
    ]
    service, replays = hub.service, 0
    while members[0].rounds_done() < CHEAT_ROUNDS:
        for member in members:
            member.work()
            note_caught(hub, [member], member.rounds_done())
        clock.now += CHEAT_PASS_S
        service.close_due_rounds()
        replays += service.verify_pending(limit=len(members))
        note_caught(hub, members, members[0].rounds_done())
    figures, details = cheater_figures(hub, members)
    details.update(rounds=CHEAT_ROUNDS, replays=replays, inner_steps=CHEAT_STEPS)
    service.state.close()
    return figures, details


def note_caught(hub: Hub, members: list[TrainingMember], rounds_done: int) -> None:
    with hub.service.state.reading() as s:
        for m in members:
            worker = s.get(Worker, m.worker_id)
            if m.caught is None and worker is not None and worker.flagged_at is not None:
                m.caught = rounds_done


def cheater_figures(hub: Hub, members: list[TrainingMember]) -> Figures:
    """Cheaters caught, the rounds that closed between a cheater's first upload and its being
    caught, and the credit its provider holds at the end (credit less corrections)."""
    with hub.service.state.reading() as s:
        rows = s.execute(select(LedgerEntry.provider_id, LedgerEntry.kind, LedgerEntry.amount)).all()
    held: dict[str, float] = defaultdict(float)
    for provider_id, kind, amount in rows:
        if kind in ("compute", "correction"):
            held[provider_id] += amount
    cheaters = [m for m in members if m.cheat is not Cheat.HONEST]
    caught = [m for m in cheaters if m.caught is not None]
    delays = [m.caught - (m.first_upload or 0) for m in caught if m.caught is not None]
    figures: dict[str, object] = {
        "cheaters": len(cheaters),
        "cheaters_detected": len(caught),
        "rounds_to_detect_max": max(delays) if len(caught) == len(cheaters) else None,
        "cheater_credit_left_pflop": sum(held[m.who.provider_id] for m in cheaters),
        "cheaters_note": (
            "a third hub: one run, pool members pinned to it that train for real (tessera.worker's "
            f"session), {CHEAT_HONEST} honest, one claiming 10x its tokens, one uploading noise of its "
            "honest update's scale; the ticker's replays (tessera.hub.verify, default settings) run "
            "after each pass; rounds_to_detect: rounds closed between a cheater's first upload and its "
            "being caught (0: before any closed); the pool simulation's workers do not train, so its hub "
            "runs no replays"
        ),
    }
    details: dict[str, object] = {
        m.name: {
            "caught_after_rounds": None if m.caught is None else m.caught - (m.first_upload or 0),
            "credit_left_pflop": held[m.who.provider_id],
        }
        for m in members
    }
    details["honest_caught"] = sum(m.caught is not None for m in members if m.cheat is Cheat.HONEST)
    return figures, details


# --- output ------------------------------------------------------------------------------


def scratch() -> str | None:
    """Memory-backed /dev/shm for the hub's SQLite and blobs where there is one (commits and
    blob writes fsync; the figures do not depend on the disk), else the system's temp folder."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-staleness", type=int, default=5, help="the runs' run.max_staleness")
    parser.add_argument("--jitter", type=float, default=0.03, help="a lease's step time's sigma (relative)")
    parser.add_argument(
        "--member-timeout-s", type=float, default=4 * HOUR_S, help="the hub's pool.member_timeout_s"
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/pool.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # the hub's tiny tensors: threads on 2 shared cores only wait for each other
    logging.basicConfig(level=logging.ERROR)  # the hub's warnings (a cheater caught) are expected here
    started = time.perf_counter()
    options = Options(
        args.workers, args.days, args.seed, args.max_staleness, args.jitter, args.member_timeout_s
    )
    with tempfile.TemporaryDirectory(dir=scratch()) as tmp:
        pool, pool_details = simulate_pool(Path(tmp) / "pool", options)
        churn, churn_details = simulate_churn(Path(tmp) / "churn", options)
        cheat, cheat_details = simulate_cheaters(Path(tmp) / "cheaters", options)
    details = {"pool": pool_details, "churn": churn_details, "cheaters": cheat_details}
    output = {
        **pool,
        **churn,
        **cheat,
        "details": details,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": 2},
        "command": "python " + " ".join(sys.argv),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps({k: v for k, v in output.items() if k != "details"}, indent=2))


if __name__ == "__main__":
    main()
