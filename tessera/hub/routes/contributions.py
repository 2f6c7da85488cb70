"""POST /v1/runs/{run}/contributions: a worker's upload (safetensors body, JSON metadata in a
header). The reply says whether its status is final; a round it makes due closes after the reply
is sent, so the uploader never waits for aggregation and evaluation."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, BackgroundTasks, Header, Request
from starlette.concurrency import run_in_threadpool

from tessera.api.messages import ContributionMeta, ContributionReply
from tessera.api.protocol import META_HEADER
from tessera.hub.routes.common import BINARY, RunId, Service, Who, error_docs, parse_header, read_limited

router = APIRouter()
BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": BINARY}}}


def parse_meta(raw: str | None) -> ContributionMeta:
    return parse_header(ContributionMeta, raw, META_HEADER, "contribution")


@router.post(
    "/v1/runs/{run_id}/contributions",
    response_model=ContributionReply,
    openapi_extra=BINARY_BODY,
    responses=error_docs(409, 413),
)
async def contribute(
    run_id: RunId,
    request: Request,
    who: Who,
    service: Service,
    background: BackgroundTasks,
    meta_header: Annotated[str | None, Header(alias=META_HEADER)] = None,
) -> ContributionReply:
    """Upload a contribution: safetensors body, JSON metadata in the header. ``final`` in the
    reply says whether its status is final; a round this upload makes due closes after the reply
    is sent."""
    limit = await run_in_threadpool(service.upload_limit, run_id, who)  # 403 before anything is read
    meta = parse_meta(meta_header)
    body = await read_limited(request, limit)
    # on the uploads' own threads (limits.max_assessing): decoded tensors in memory stay bounded,
    # and an upload waiting its turn holds no thread that leases need
    limiter: anyio.CapacityLimiter = request.app.state.upload_limiter
    reply = await anyio.to_thread.run_sync(service.submit, run_id, who, meta, body, limiter=limiter)
    if reply.status != "rejected" and not reply.duplicate:
        background.add_task(service.close_if_due, run_id)
    return reply
