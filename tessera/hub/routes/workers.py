"""/v1/runs/{run}/workers and /leases: a worker joins a run, then leases work round by round."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from tessera.api.messages import LeaseReply, LeaseRequest, RegisterReply, RegisterRequest
from tessera.hub.routes.common import Admitted, RunId, Service, Who, error_docs

router = APIRouter()


@router.post("/v1/runs/{run_id}/workers", status_code=201, response_model=RegisterReply)
def register(run_id: RunId, req: RegisterRequest, who: Who, service: Service) -> RegisterReply:
    return service.register(run_id, who, req.name, req.module, req.ranks, req.member_id, req.held_datasets)


@router.post("/v1/runs/{run_id}/leases", response_model=LeaseReply, responses=error_docs(429))
async def lease(
    run_id: RunId, req: LeaseRequest, who: Who, service: Service, admission: Admitted
) -> LeaseReply:
    """A lease on the current round; a worker that contributed to it already waits up to
    ``wait_s`` for the next (at most ``limits.max_waiting_leases`` per provider at once), on the
    event loop: a waiting lease holds no thread."""
    since = service.rounds_closed.generation
    reply = await run_in_threadpool(service.try_lease, run_id, who, req.worker_id)
    if reply.status != "wait" or req.wait_s <= 0:
        return reply
    give_up = time.monotonic() + req.wait_s
    with admission.waiting_lease(who):
        while reply.status == "wait" and (remaining := give_up - time.monotonic()) > 0:
            await service.rounds_closed.wait_async(since, remaining)
            since = service.rounds_closed.generation
            reply = await run_in_threadpool(service.try_lease, run_id, who, req.worker_id)
    return reply
