"""/v1/pool and /v1/pledges: pool workers join and ask where to work, providers read the queue
and pledge compute."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.messages import (
    Assignment,
    AssignRequest,
    PledgeInfo,
    PledgeRequest,
    PoolJoinRequest,
    PoolMemberInfo,
    QueueReport,
)
from tessera.hub.routes.common import HexId, Service, Who

router = APIRouter()


@router.post("/v1/pool/members", status_code=201, response_model=PoolMemberInfo)
def join(req: PoolJoinRequest, who: Who, service: Service) -> PoolMemberInfo:
    """Offer a worker to the pool; it then asks where to work at every round boundary."""
    return service.pool.join(who, req)


@router.get("/v1/pool/members", response_model=list[PoolMemberInfo])
def members(who: Who, service: Service) -> list[PoolMemberInfo]:
    """The caller's pool workers alive now (a hub admin: everyone's)."""
    return service.pool.members(who)


@router.post("/v1/pool/members/{member_id}/assign", response_model=Assignment)
def assign(member_id: HexId, req: AssignRequest, who: Who, service: Service) -> Assignment:
    """Where this pool worker works now: a run, or nowhere for a while (and why)."""
    return service.pool.assign(who, member_id, req)


@router.get("/v1/pool/queue", response_model=QueueReport)
def queue(who: Who, service: Service) -> QueueReport:
    """The runs claiming pool workers that the caller may read: score, share, and why they wait."""
    return service.pool.queue(who)


@router.post("/v1/pledges", status_code=201, response_model=PledgeInfo)
def pledge(req: PledgeRequest, who: Who, service: Service) -> PledgeInfo:
    """Pledge nodes or a budget to a run, a collective's runs or the whole pool."""
    return service.pledges.create(who, req)


@router.get("/v1/pledges", response_model=list[PledgeInfo])
def pledges(who: Who, service: Service) -> list[PledgeInfo]:
    """The caller's pledges (a hub admin: everyone's) and what each delivered."""
    return service.pledges.of(who)


@router.post("/v1/pledges/{pledge_id}/cancel", response_model=PledgeInfo)
def cancel(pledge_id: HexId, who: Who, service: Service) -> PledgeInfo:
    """End a pledge; it stays on record, and its workers serve the pool."""
    return service.pledges.cancel(who, pledge_id)
