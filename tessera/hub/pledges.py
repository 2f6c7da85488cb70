"""Pledges: what providers promise the commons, and what each delivered.

A pledge is ``nodes`` (N of the provider's pool workers, optionally of one kind and within
availability windows) or a ``budget`` (N inner steps or N PFLOP), to a run, to a collective's
runs, or to the whole pool. Pool workers serve their provider's pledges' targets first
(``tessera.hub.pool``); every lease records the pledge it served, so what a pledge delivered is
read from the accepted contributions of those leases (steps) and their ledger credits (PFLOP).
A budget pledge is fulfilled once it delivered its budget; any pledge can be cancelled, and
stays on record.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tessera.api.messages import PledgeInfo, PledgeRequest
from tessera.errors import ConfigError, Conflict, NotFound
from tessera.hub.auth import Principal
from tessera.hub.context import HubContext
from tessera.hub.providers import own_collective
from tessera.hub.runs import participant
from tessera.hub.tables import Contribution, Lease, LedgerEntry, Pledge, PoolMember, Provider, Run, new_id
from tessera.pool.windows import availability


class Pledges:
    def __init__(self, hub: HubContext) -> None:
        self.hub = hub

    def create(self, who: Principal, req: PledgeRequest) -> PledgeInfo:
        """A new active pledge of ``who``'s (ConfigError naming what to fix, 403 for a target
        ``who`` may not work for)."""
        kind = check_shape(req)
        availability(req.windows, req.holidays)  # ConfigError for a window that cannot be read
        with self.hub.state.transaction() as s:
            target_id = self._target_id(s, who, req)
            pledge = Pledge(
                id=new_id(),
                provider_id=who.provider_id,
                kind=kind,
                target=req.target,
                target_id=target_id,
                nodes=req.nodes,
                worker_kind=req.worker_kind,
                windows=list(req.windows),
                holidays=list(req.holidays),
                steps=req.steps,
                pflop=req.pflop,
                status="active",
                created_at=self.hub.clock(),
            )
            s.add(pledge)
            s.flush()
            return self._infos(s, [pledge])[0]

    def _target_id(self, s: Session, who: Principal, req: PledgeRequest) -> str | None:
        """The id of what the pledge serves: a run ``who`` may work on (a modular run, not one of
        its modules), a collective ``who`` belongs to (by name or id), or nothing for the pool."""
        if req.target == "pool":
            if req.target_id is not None:
                raise ConfigError("a pledge to the whole pool names no target; leave out the target id")
            return None
        if req.target_id is None:
            raise ConfigError(f"a pledge to a {req.target} names it: give its id (or a collective's name)")
        if req.target == "run":
            run = participant(s, req.target_id, who)
            if run.parent_id is not None:
                raise ConfigError(
                    f"run {run.id} is module {run.module} of run {run.parent_id}; pledge to that run"
                )
            return run.id
        collective = own_collective(s, who, req.target_id, "; pledges go to your own")
        return collective.id

    def of(self, who: Principal) -> list[PledgeInfo]:
        """``who``'s pledges (a hub admin: everyone's), newest first."""
        with self.hub.state.reading() as s:
            query = select(Pledge).order_by(Pledge.created_at.desc())
            if not who.is_admin:
                query = query.where(Pledge.provider_id == who.provider_id)
            return self._infos(s, s.scalars(query).all())

    def cancel(self, who: Principal, pledge_id: str) -> PledgeInfo:
        """End an active pledge of ``who``'s (an admin may end anyone's); its workers serve the pool."""
        with self.hub.state.transaction() as s:
            pledge = s.get(Pledge, pledge_id)
            if pledge is None or not (who.is_admin or pledge.provider_id == who.provider_id):
                raise NotFound(f"no pledge {pledge_id} of yours; `tessera pledge list` shows them")
            if pledge.status != "active":
                raise Conflict(f"pledge {pledge_id} is {pledge.status} already")
            pledge.status, pledge.ended_at = "cancelled", self.hub.clock()
            for member in s.scalars(select(PoolMember).where(PoolMember.pledge_id == pledge_id)):
                member.pledge_id = None
            return self._infos(s, [pledge])[0]

    def active(self, s: Session, provider_id: str) -> list[Pledge]:
        """The provider's active pledges, oldest first; a budget pledge that has delivered its
        budget is marked fulfilled here (and left out)."""
        pledges = s.scalars(
            select(Pledge)
            .where(Pledge.provider_id == provider_id, Pledge.status == "active")
            .order_by(Pledge.created_at)
        ).all()
        done = delivered(s, [p.id for p in pledges if p.kind == "budget"])
        active = []
        for p in pledges:
            steps, pflop = done.get(p.id, (0, 0.0))
            if p.kind == "budget" and ((p.steps and steps >= p.steps) or (p.pflop and pflop >= p.pflop)):
                p.status, p.ended_at = "fulfilled", self.hub.clock()
            else:
                active.append(p)
        return active

    def _infos(self, s: Session, pledges: Sequence[Pledge]) -> list[PledgeInfo]:
        done = delivered(s, [p.id for p in pledges])
        names = {pid: name for pid, name in s.execute(select(Provider.id, Provider.name))}
        bound = {
            str(pid): int(n)
            for pid, n in s.execute(
                select(PoolMember.pledge_id, func.count())
                .where(PoolMember.pledge_id.in_([p.id for p in pledges]))
                .group_by(PoolMember.pledge_id)
            )
        }
        return [info(p, names, bound.get(p.id, 0), done.get(p.id, (0, 0.0))) for p in pledges]


def check_shape(req: PledgeRequest) -> str:
    """``nodes`` or ``budget``: what the request pledges (ConfigError if it is neither or both)."""
    budget = req.steps is not None or req.pflop is not None
    if req.nodes is None and not budget:
        raise ConfigError("pledge nodes (--nodes N) or a budget (--steps N or --pflop X)")
    if req.nodes is not None and budget:
        raise ConfigError("a pledge is nodes or a budget, not both; make two pledges")
    if req.steps is not None and req.pflop is not None:
        raise ConfigError("a budget is steps or PFLOP, not both; make two pledges")
    if budget and (req.windows or req.worker_kind):
        raise ConfigError("windows and a worker kind belong to a nodes pledge; a budget has neither")
    return "budget" if budget else "nodes"


def delivered(s: Session, pledge_ids: Sequence[str]) -> dict[str, tuple[int, float]]:
    """(inner steps, PFLOP) each pledge's leases delivered: their credited contributions."""
    if not pledge_ids:
        return {}
    rows = s.execute(
        select(Lease.pledge_id, func.sum(Contribution.steps), func.sum(LedgerEntry.amount))
        .join(Contribution, Contribution.lease_id == Lease.id)
        .join(
            LedgerEntry,
            (LedgerEntry.run_id == Contribution.run_id)
            & (LedgerEntry.contribution_id == Contribution.id)
            & (LedgerEntry.kind == "compute"),
        )
        .where(Lease.pledge_id.in_(pledge_ids))
        .group_by(Lease.pledge_id)
    ).all()
    return {str(pid): (int(steps or 0), float(pflop or 0.0)) for pid, steps, pflop in rows}


def target_runs(s: Session, pledge: Pledge) -> list[str]:
    """The active runs a pledge serves (none for a pledge to the whole pool)."""
    if pledge.target == "run" and pledge.target_id is not None:
        run = s.get(Run, pledge.target_id)
        return [run.id] if run is not None and run.status == "active" else []
    if pledge.target == "collective":
        return list(
            s.scalars(
                select(Run.id).where(
                    Run.collective_id == pledge.target_id, Run.status == "active", Run.parent_id.is_(None)
                )
            )
        )
    return []


def info(p: Pledge, names: dict[str, str], members: int, done: tuple[int, float]) -> PledgeInfo:
    return PledgeInfo(
        pledge_id=p.id,
        provider=names.get(p.provider_id, p.provider_id),
        kind=p.kind,  # type: ignore[arg-type]
        target=p.target,
        target_id=p.target_id,
        nodes=p.nodes,
        worker_kind=p.worker_kind,
        windows=list(p.windows),
        holidays=list(p.holidays),
        steps=p.steps,
        pflop=p.pflop,
        status=p.status,
        created_at=p.created_at,
        ended_at=p.ended_at,
        members=members,
        delivered_steps=done[0],
        delivered_pflop=done[1],
    )
