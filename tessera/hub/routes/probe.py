"""/v1/probe: bytes to time a link with (`tessera probe`): zeros streamed down, a body counted
and discarded as it comes up, within the provider's probe budget."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from tessera.api.messages import ProbeReply
from tessera.api.protocol import MAX_PROBE_BYTES
from tessera.errors import PayloadTooLarge
from tessera.hub.routes.common import BINARY, BINARY_REPLY, Admitted, Who, error_docs

router = APIRouter()
PROBE_CHUNK = 1 << 20
PROBE_BODY = {"requestBody": {"required": False, "content": {"application/octet-stream": BINARY}}}


@router.get("/v1/probe", response_class=StreamingResponse, responses={**BINARY_REPLY, **error_docs(429)})
def probe_download(
    who: Who, admission: Admitted, nbytes: Annotated[int, Query(ge=0, le=MAX_PROBE_BYTES)] = 0
) -> StreamingResponse:
    """``nbytes`` zero bytes, streamed, for ``tessera probe`` to time latency and download
    bandwidth (within the provider's probe budget)."""
    admission.spend_probe(who, nbytes)

    def zeros() -> Iterator[bytes]:
        chunk, left = bytes(min(PROBE_CHUNK, nbytes)), nbytes
        while left > 0:
            yield chunk[: min(left, PROBE_CHUNK)]
            left -= PROBE_CHUNK

    headers = {"Content-Length": str(nbytes)}
    return StreamingResponse(zeros(), media_type="application/octet-stream", headers=headers)


@router.post("/v1/probe", response_model=ProbeReply, openapi_extra=PROBE_BODY, responses=error_docs(413, 429))
async def probe_upload(request: Request, who: Who, admission: Admitted) -> ProbeReply:
    """Count and discard the body as it arrives, for ``tessera probe`` to time upload
    bandwidth (within the provider's probe budget; nothing is kept in memory)."""
    declared = request.headers.get("content-length")
    size = int(declared) if declared and declared.isdigit() else MAX_PROBE_BYTES
    if size > MAX_PROBE_BYTES:
        raise PayloadTooLarge(f"probe of {size} bytes exceeds the limit of {MAX_PROBE_BYTES} bytes")
    admission.spend_probe(who, size)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > MAX_PROBE_BYTES:
            raise PayloadTooLarge(f"probe body exceeds the limit of {MAX_PROBE_BYTES} bytes")
    return ProbeReply(nbytes=received)
