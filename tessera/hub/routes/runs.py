"""/v1/runs: creating runs, pausing and resuming them, and reading them (status, rounds,
versions, contributions, credits, blobs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from tessera.api.messages import (
    Balance,
    ContributionInfo,
    CreateRunReply,
    RoundMetrics,
    RunStatus,
    VersionInfo,
)
from tessera.api.protocol import MAX_NUMBER
from tessera.errors import TesseraError
from tessera.hub.routes.common import (
    BINARY_REPLY,
    Admitted,
    Number,
    RunId,
    Service,
    Sha,
    Who,
    error_docs,
    read_limited,
)

router = APIRouter()
TOML_BODY = {
    "requestBody": {"required": True, "content": {"application/toml": {"schema": {"type": "string"}}}}
}


@router.post(
    "/v1/runs",
    status_code=201,
    response_model=CreateRunReply,
    openapi_extra=TOML_BODY,
    responses=error_docs(413, 429),
)
async def create_run(request: Request, who: Who, service: Service, admission: Admitted) -> CreateRunReply:
    """Create a run from a recipe (TOML in the body); the caller becomes its owner."""
    body = await read_limited(request, service.limits.max_recipe_bytes)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TesseraError("recipe must be UTF-8 TOML text") from exc
    if "\x00" in text:
        raise TesseraError("recipe contains a NUL character; send plain TOML text")
    with admission.creating_run(who):
        return await run_in_threadpool(service.create_run, who, text)


@router.get("/v1/runs", response_model=list[RunStatus])
def list_runs(who: Who, service: Service) -> list[RunStatus]:
    return [service.status(run_id, who) for run_id in service.run_ids(who)]


@router.get("/v1/runs/{run_id}", response_model=RunStatus)
def run_status(run_id: RunId, who: Who, service: Service) -> RunStatus:
    return service.status(run_id, who)


@router.get("/v1/runs/{run_id}/rounds", response_model=list[RoundMetrics])
def run_rounds(run_id: RunId, who: Who, service: Service) -> list[RoundMetrics]:
    return service.rounds(run_id, who)


@router.get("/v1/runs/{run_id}/contributions", response_model=list[ContributionInfo])
def contributions(
    run_id: RunId, who: Who, service: Service, round: Annotated[int | None, Query(ge=0, le=MAX_NUMBER)] = None
) -> list[ContributionInfo]:
    """Contributions with status and rejection reasons (optionally of one round)."""
    return service.contributions(run_id, who, round)


@router.get("/v1/runs/{run_id}/credits", response_model=list[Balance])
def credits(run_id: RunId, who: Who, service: Service) -> list[Balance]:
    """Compute credited per provider for this run: its contributors."""
    return service.credits(run_id, who)


@router.post("/v1/runs/{run_id}/pause", response_model=RunStatus)
def pause(run_id: RunId, who: Who, service: Service) -> RunStatus:
    """Pause the run: no new leases; pool workers move to other runs (its owner or an admin)."""
    service.runs.pause(run_id, who, paused=True)
    return service.status(run_id, who)


@router.post("/v1/runs/{run_id}/resume", response_model=RunStatus)
def resume(run_id: RunId, who: Who, service: Service) -> RunStatus:
    service.runs.pause(run_id, who, paused=False)
    return service.status(run_id, who)


@router.get("/v1/runs/{run_id}/versions/latest", response_model=VersionInfo)
def latest_version(run_id: RunId, who: Who, service: Service) -> VersionInfo:
    return service.version(run_id, who)


@router.get("/v1/runs/{run_id}/versions/{number}", response_model=VersionInfo)
def version(run_id: RunId, number: Number, who: Who, service: Service) -> VersionInfo:
    return service.version(run_id, who, number)


@router.get("/v1/runs/{run_id}/blobs/{sha}", response_class=Response, responses=BINARY_REPLY)
def blob(run_id: RunId, sha: Sha, who: Who, service: Service) -> Response:
    """Download a version's safetensors blob (or a version's change from its parent)."""
    return Response(service.download(run_id, who, sha), media_type="application/octet-stream")
