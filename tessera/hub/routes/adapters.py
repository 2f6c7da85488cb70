"""/v1/runs/{run}/adapters: providers' LoRA fine-tunes of the run's versions (safetensors body,
JSON metadata in a header), listed and read by those who may (tessera.hub.adapters)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from tessera.api.messages import AdapterInfo, AdapterMeta
from tessera.api.protocol import ADAPTER_HEADER
from tessera.hub.routes.common import (
    BINARY,
    BINARY_REPLY,
    HexId,
    RunId,
    Service,
    Who,
    error_docs,
    parse_header,
    read_limited,
)

router = APIRouter()
BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": BINARY}}}


def parse_meta(raw: str | None) -> AdapterMeta:
    return parse_header(AdapterMeta, raw, ADAPTER_HEADER, "adapter")


@router.post(
    "/v1/runs/{run_id}/adapters",
    status_code=201,
    response_model=AdapterInfo,
    openapi_extra=BINARY_BODY,
    responses=error_docs(413),
)
async def upload_adapter(
    run_id: RunId,
    request: Request,
    who: Who,
    service: Service,
    meta_header: Annotated[str | None, Header(alias=ADAPTER_HEADER)] = None,
) -> AdapterInfo:
    """Keep an adapter (a LoRA fine-tune of one of the run's versions); private unless shared."""
    limit = await run_in_threadpool(service.adapters.upload_limit, run_id, who)  # 403 before any read
    meta = parse_meta(meta_header)
    body = await read_limited(request, limit)
    return await run_in_threadpool(service.adapters.upload, run_id, who, meta, body)


@router.get("/v1/runs/{run_id}/adapters", response_model=list[AdapterInfo])
def list_adapters(run_id: RunId, who: Who, service: Service) -> list[AdapterInfo]:
    """The run's adapters you may read: shared ones, and your own."""
    return service.adapters.list(run_id, who)


@router.get("/v1/runs/{run_id}/adapters/{adapter_id}", response_model=AdapterInfo)
def get_adapter(run_id: RunId, adapter_id: HexId, who: Who, service: Service) -> AdapterInfo:
    return service.adapters.get(run_id, who, adapter_id)


@router.get("/v1/runs/{run_id}/adapters/{adapter_id}/blob", response_class=Response, responses=BINARY_REPLY)
def adapter_blob(run_id: RunId, adapter_id: HexId, who: Who, service: Service) -> Response:
    """The adapter's tensors (safetensors)."""
    return Response(service.adapters.blob(run_id, who, adapter_id), media_type="application/octet-stream")
