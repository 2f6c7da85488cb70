"""/v1/runs/{run}/lineage and /events: what produced a run's versions (datasets, tokens, whose
compute, the version it forked from) and what its owners were told."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from tessera.api.commons import RunEventInfo, RunLineage
from tessera.api.protocol import MAX_NUMBER
from tessera.hub.routes.common import RunId, Service, Who

router = APIRouter()
VersionQuery = Annotated[int | None, Query(ge=0, le=MAX_NUMBER, description="a version number")]


@router.get("/v1/runs/{run_id}/lineage", response_model=RunLineage)
def lineage(run_id: RunId, who: Who, service: Service, version: VersionQuery = None) -> RunLineage:
    """The lineage of a version (default: the latest)."""
    return service.reads.lineage(run_id, who, version)


@router.get("/v1/runs/{run_id}/events", response_model=list[RunEventInfo])
def events(run_id: RunId, who: Who, service: Service) -> list[RunEventInfo]:
    return service.reads.events(run_id, who)
