"""/v1/runs/{run}/merges: merging modules of a modular run, and the record of every merge."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.messages import MergeReply, MergeRequest
from tessera.hub.routes.common import RunId, Service, Who, error_docs

router = APIRouter()


@router.post("/v1/runs/{run_id}/merges", response_model=MergeReply, responses=error_docs(409))
def merge(run_id: RunId, req: MergeRequest, who: Who, service: Service) -> MergeReply:
    return service.merges.merge(run_id, who, req)


@router.get("/v1/runs/{run_id}/merges", response_model=list[MergeReply])
def merges(run_id: RunId, who: Who, service: Service) -> list[MergeReply]:
    return service.merges.history(run_id, who)
