"""The pool at the hub: workers that serve it, and where each works.

A pool worker joins once (``join``: its kind, availability windows, and optionally a run it is
pinned to, a collective whose runs alone it serves, or the nodes pledge it is one of), then asks
where to work at every round boundary (``assign``). Each answer comes from a fresh view of the
pool: the runs claiming workers (active, not paused, not modules), the pool workers alive and
where they are, and the fair-share entitlements of ``tessera.pool.fairshare`` from the ledger's
decayed balances; ``tessera.pool.schedule`` picks the run. A worker outside its windows is told
to wait until they open. ``queue`` shows the same view to a provider: which runs wait, their
score and why.

Placements in one hub process are made one at a time (a lock), so two workers asking at once
do not both fill the same gap; with several hub processes a gap may be filled twice, and the
next boundary evens it out.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tessera.api.messages import (
    Assignment,
    AssignRequest,
    PoolJoinRequest,
    PoolMemberInfo,
    QueueEntry,
    QueueReport,
)
from tessera.errors import ConfigError, NotFound
from tessera.hub.auth import Principal, may_read, may_work_on
from tessera.hub.context import HubContext
from tessera.hub.ledger import decayed_balances
from tessera.hub.pledges import Pledges, target_runs
from tessera.hub.providers import own_collective
from tessera.hub.runs import participant
from tessera.hub.tables import Lease, Membership, Pledge, PoolMember, Provider, Run, Worker, new_id
from tessera.pool.fairshare import Claim, account_balances, account_of, entitlements, score
from tessera.pool.schedule import Position, Standing, choose
from tessera.pool.windows import availability
from tessera.recipe import Recipe, RunSettings

BALANCES_FRESH_S = 30.0  # decayed balances are read again after this long
STEP_SLACK = 0.9  # a windowed lease's steps fill at most this share of the time left (step times vary)


@dataclass(frozen=True)
class View:
    """The pool as one placement (or the queue) sees it."""

    runs: dict[str, Run]
    claims: dict[str, Claim]
    standings: dict[str, Standing]
    balances: dict[str, float]  # per provider and per collective (members' added)
    capacity: int


def demand_of(recipe: Recipe) -> float:
    """Workers a run can use (a modular run: its modules' added)."""
    if recipe.modules:
        return sum(wanted(recipe.for_module(name).run) for name in recipe.modules)
    return wanted(recipe.run)


def wanted(run: RunSettings) -> float:
    """``[run] workers`` if set, else the quorum (a fractional quorum grows with the run's
    workers: no bound)."""
    if getattr(run, "workers", 0):
        return float(run.workers)
    return float(run.quorum) if run.quorum >= 1 else math.inf


@dataclass(frozen=True)
class WindowLimit:
    """What a pool worker's windows leave a new lease: the time to stop training (None: no window
    ends first) and the inner steps that fit before it (None: its step time is not known yet)."""

    stop_at: float | None
    steps: int | None


def window_limit(member: PoolMember, now: float, margin_s: float) -> WindowLimit | None:
    """The limit its windows set a lease issued now; None if no lease fits (closed, or too near
    the window's end for one inner step and the upload)."""
    end = availability(member.windows, member.holidays).open_until(now)
    if end is None:
        return None
    if math.isinf(end):
        return WindowLimit(None, None)
    stop = end - margin_s
    steps = int(STEP_SLACK * (stop - now) / member.step_s) if member.step_s else None
    if stop <= now or steps == 0:
        return None
    return WindowLimit(stop, steps)


def reopens_in(member: PoolMember, now: float, default_s: float) -> float:
    """Seconds until the worker's windows open again (``default_s`` if not within two weeks)."""
    windows = availability(member.windows, member.holidays)
    end = windows.open_until(now)
    opens = windows.next_open(end if end is not None and not math.isinf(end) else now)
    return default_s if opens is None else max(1.0, opens - now)


class Pool:
    def __init__(self, hub: HubContext, pledges: Pledges) -> None:
        self.hub, self.pledges = hub, pledges
        self.settings = hub.config.pool
        self._placing = threading.Lock()
        self._balances: tuple[float, dict[str, float]] | None = None

    # --- joining -------------------------------------------------------------------------

    def join(self, who: Principal, req: PoolJoinRequest) -> PoolMemberInfo:
        """A new pool worker of ``who``'s; a nodes pledge of its provider with a free place (and
        its kind) takes it unless it names one, and lends it its windows if it declares none."""
        availability(req.windows, req.holidays)  # ConfigError for a window that cannot be read
        now = self.hub.clock()
        with self.hub.state.transaction() as s:
            if req.pinned_run_id is not None:
                participant(s, req.pinned_run_id, who)
            collective_id = self._collective(s, who, req.collective)
            pledge = self._pledge_for(s, who, req)
            windows = list(req.windows) or (list(pledge.windows) if pledge else [])
            holidays = list(req.holidays) or (list(pledge.holidays) if pledge else [])
            member = PoolMember(
                id=new_id(),
                provider_id=who.provider_id,
                name=req.name,
                kind=req.kind,
                pinned_run_id=req.pinned_run_id,
                collective_id=collective_id,
                pledge_id=pledge.id if pledge else None,
                windows=windows,
                holidays=holidays,
                joined_at=now,
                last_seen_at=now,
            )
            s.add(member)
            s.flush()
            return member_info(member, who.name, collective_name(s, collective_id))

    def _collective(self, s: Session, who: Principal, name: str | None) -> str | None:
        if name is None:
            return None
        return own_collective(s, who, name).id

    def _pledge_for(self, s: Session, who: Principal, req: PoolJoinRequest) -> Pledge | None:
        """The nodes pledge the new worker is one of: the one it names (its provider's, active),
        else the oldest of its provider's with a free place for its kind, else none."""
        if req.pledge_id is not None:
            pledge = s.get(Pledge, req.pledge_id)
            if pledge is None or pledge.provider_id != who.provider_id or pledge.kind != "nodes":
                raise NotFound(f"no nodes pledge {req.pledge_id} of yours; `tessera pledge list` shows them")
            if pledge.status != "active":
                raise ConfigError(f"pledge {pledge.id} is {pledge.status}; join without --pledge")
            if self._bound(s, pledge) >= (pledge.nodes or 0):
                raise ConfigError(
                    f"pledge {pledge.id} has its {pledge.nodes} nodes already; join without --pledge "
                    "(or pledge more nodes)"
                )
            return pledge
        for pledge in self.pledges.active(s, who.provider_id):
            if pledge.kind != "nodes" or pledge.worker_kind not in (None, req.kind):
                continue
            if self._bound(s, pledge) < (pledge.nodes or 0):
                return pledge
        return None

    def _bound(self, s: Session, pledge: Pledge) -> int:
        """The pool workers alive now that are nodes of ``pledge``."""
        live = self.hub.clock() - self.settings.member_timeout_s
        bound = s.scalar(
            select(func.count())
            .select_from(PoolMember)
            .where(PoolMember.pledge_id == pledge.id, PoolMember.last_seen_at >= live)
        )
        return int(bound or 0)

    # --- placing -------------------------------------------------------------------------

    def assign(self, who: Principal, member_id: str, req: AssignRequest) -> Assignment:
        """Where the pool worker works now (see the module docstring)."""
        with self._placing, self.hub.state.transaction() as s:
            member = s.get(PoolMember, member_id)
            if member is None or member.provider_id != who.provider_id:
                raise NotFound(f"no pool worker {member_id} of yours; join the pool again")
            now = self.hub.clock()
            member.last_seen_at = now
            closed = self._closed_window(member, now)
            if closed is not None:
                return closed
            view = self.view(s, now, asking=member.id)
            eligible = [r for r in view.runs.values() if self._may_serve(who, member, r, req.exclude)]
            preferred, serving = self._preferred(s, member)
            position = Position(member.run_id, now - (member.assigned_at or now))
            chosen = choose(
                [r.id for r in eligible], preferred, view.standings, position, self.settings.min_stay_s
            )
            if chosen is None:
                member.run_id, member.serving, member.assigned_at = None, None, None
                return Assignment(
                    status="idle",
                    retry_after_s=self.settings.idle_retry_s,
                    reason=idle_reason(member, eligible),
                )
            if chosen != member.run_id:
                member.run_id, member.assigned_at = chosen, now
            member.serving = serving.get(chosen, serving.get("", None))
            return Assignment(
                status="work",
                run_id=chosen,
                worker_id=worker_in(s, member.id, chosen),
                serving=member.serving,
            )

    def _closed_window(self, member: PoolMember, now: float) -> Assignment | None:
        """An idle answer until the worker's windows open again, if no lease fits in them now
        (closed, or too near the end for a step and the upload: the rule leases follow)."""
        if window_limit(member, now, self.settings.window_margin_s) is not None:
            return None
        member.run_id, member.serving, member.assigned_at = None, None, None
        wait = reopens_in(member, now, self.settings.idle_retry_s)
        return Assignment(
            status="idle", retry_after_s=wait, reason=f"outside its windows; they open in {wait / 3600:.1f} h"
        )

    def _may_serve(self, who: Principal, member: PoolMember, run: Run, exclude: list[str]) -> bool:
        return (
            may_work_on(who, run.owner_id, run.collective_id)
            and member.pinned_run_id in (None, run.id)
            and member.collective_id in (None, run.collective_id)
            and run.id not in exclude
        )

    def _preferred(self, s: Session, member: PoolMember) -> tuple[list[str], dict[str, str]]:
        """The runs the worker's pledges point at (its own nodes pledge first, then its provider's
        budgets), and the pledge each run's work is for ('' : any run, a pledge to the pool)."""
        runs: list[str] = []
        serving: dict[str, str] = {}
        for pledge in self.pledges.active(s, member.provider_id):
            if pledge.kind == "nodes" and pledge.id != member.pledge_id:
                continue
            if pledge.target == "pool":
                serving.setdefault("", pledge.id)
            for run_id in target_runs(s, pledge):
                serving.setdefault(run_id, pledge.id)
                if run_id not in runs:
                    runs.append(run_id)
        nodes_first = sorted(runs, key=lambda r: serving[r] != member.pledge_id)
        return nodes_first, serving

    # --- the view ------------------------------------------------------------------------

    def view(self, s: Session, now: float, asking: str | None = None) -> View:
        """Runs claiming workers, pool workers alive and working (and ``asking``), entitlements."""
        runs = {
            r.id: r
            for r in s.scalars(
                select(Run).where(Run.status == "active", Run.paused.is_(False), Run.parent_id.is_(None))
            )
        }
        live = now - self.settings.member_timeout_s
        leasing = (  # a pool worker on a lease is alive, however long the lease
            select(Worker.member_id)
            .join(Lease, Lease.worker_id == Worker.id)
            .where(Worker.member_id.is_not(None), Lease.state == "open", Lease.deadline > now)
        )
        placed = s.execute(
            select(PoolMember.id, PoolMember.run_id).where(
                (PoolMember.last_seen_at >= live) | PoolMember.id.in_(leasing)
            )
        ).all()
        working = [(mid, rid) for mid, rid in placed if rid is not None or mid == asking]
        current = Counter(rid for _, rid in working if rid in runs)
        claims = {
            r.id: Claim(r.id, r.owner_id, r.collective_id, self._priority(r), demand_of(self._recipe(r)))
            for r in runs.values()
        }
        balances = self._account_balances(s, now)
        entitled = entitlements(len(working), list(claims.values()), balances, self.settings.fair_share)
        standings = {r: Standing(entitled.get(r, 0.0), current[r], claims[r].demand) for r in runs}
        return View(runs, claims, standings, balances, len(working))

    def _recipe(self, run: Run) -> Recipe:
        return self.hub.runtimes.whole_recipe(run.id)

    def _priority(self, run: Run) -> float:
        return self._recipe(run).run.priority

    def _account_balances(self, s: Session, now: float) -> dict[str, float]:
        """Decayed balances per provider and collective, read at most every BALANCES_FRESH_S."""
        cached = self._balances
        if cached is None or not 0 <= now - cached[0] < BALANCES_FRESH_S:
            members: dict[str, list[str]] = {}
            for collective, member in s.execute(select(Membership.collective_id, Membership.member_id)):
                members.setdefault(collective, []).append(member)
            balances = decayed_balances(s, now, self.settings.half_life_s)
            cached = self._balances = (now, account_balances(balances, members))
        return cached[1]

    # --- reading -------------------------------------------------------------------------

    def queue(self, who: Principal) -> QueueReport:
        """The runs claiming pool workers that ``who`` may read, highest score first, with why."""
        with self.hub.state.reading() as s:
            view = self.view(s, self.hub.clock())
            names = {pid: name for pid, name in s.execute(select(Provider.id, Provider.name))}
        fs = self.settings.fair_share
        scores = {r: score(c, view.balances, fs) for r, c in view.claims.items()}
        entries = []
        for run_id in sorted(scores, key=lambda r: -scores[r]):
            run, claim, standing = view.runs[run_id], view.claims[run_id], view.standings[run_id]
            if not (who.is_admin or may_read(who, run.owner_id, run.collective_id)):
                continue
            ahead = sum(1 for other in scores.values() if other > scores[run_id])
            account = account_of(claim)
            balance = view.balances.get(account, 0.0)
            entries.append(
                QueueEntry(
                    run_id=run_id,
                    name=run.name,
                    owner=names.get(run.owner_id, run.owner_id),
                    account=names.get(account, account),
                    priority=claim.priority,
                    balance_pflop=balance,
                    score=scores[run_id],
                    ahead=ahead,
                    entitled=standing.entitled,
                    workers=standing.current,
                    demand=claim.demand,
                    reason=queue_reason(names.get(account, account), balance, ahead, standing, view.capacity),
                )
            )
        return QueueReport(pool_workers=view.capacity, runs=entries)

    def members(self, who: Principal) -> list[PoolMemberInfo]:
        """``who``'s pool workers alive now (a hub admin: everyone's)."""
        with self.hub.state.reading() as s:
            live = self.hub.clock() - self.settings.member_timeout_s
            query = select(PoolMember).where(PoolMember.last_seen_at >= live).order_by(PoolMember.joined_at)
            if not who.is_admin:
                query = query.where(PoolMember.provider_id == who.provider_id)
            names = {pid: name for pid, name in s.execute(select(Provider.id, Provider.name))}
            return [
                member_info(m, names.get(m.provider_id, m.provider_id), names.get(m.collective_id or ""))
                for m in s.scalars(query)
            ]


def worker_in(s: Session, member_id: str, run_id: str) -> str | None:
    """The pool worker's worker id in the run (or one of its modules), if it worked there before."""
    return s.scalar(
        select(Worker.id)
        .join(Run, Run.id == Worker.run_id)
        .where(Worker.member_id == member_id, (Run.id == run_id) | (Run.parent_id == run_id))
        .limit(1)
    )


def collective_name(s: Session, collective_id: str | None) -> str | None:
    if collective_id is None:
        return None
    provider = s.get(Provider, collective_id)
    return provider.name if provider else collective_id


def idle_reason(member: PoolMember, eligible: list[Run]) -> str:
    if member.pinned_run_id is not None and not eligible:
        return f"its run {member.pinned_run_id} is not active (finished or paused)"
    if not eligible:
        return "no active run it may work on"
    return "every run it may work on has the workers it can use"


def queue_reason(account: str, balance: float, ahead: int, standing: Standing, capacity: int) -> str:
    """Why a run has the pool workers it has, in the words of the fair-share formula."""
    if not standing.wants():
        return f"has the {standing.demand:g} workers it can use"
    short = standing.demand - standing.current
    more = "more workers" if math.isinf(short) else f"{short:g} more worker{'' if short == 1 else 's'}"
    return (
        f"waits for {more}: {account}'s balance is {balance:+.1f} PFLOP; {ahead} runs ahead of it; "
        f"entitled to {standing.entitled:.1f} of {capacity} pool workers, has {standing.current}"
    )


def member_info(m: PoolMember, provider: str, collective: str | None) -> PoolMemberInfo:
    return PoolMemberInfo(
        member_id=m.id,
        provider=provider,
        name=m.name,
        kind=m.kind,
        windows=list(m.windows),
        holidays=list(m.holidays),
        pinned_run_id=m.pinned_run_id,
        collective=collective,
        pledge_id=m.pledge_id,
        run_id=m.run_id,
        serving=m.serving,
        assigned_at=m.assigned_at,
        last_seen_at=m.last_seen_at,
    )
