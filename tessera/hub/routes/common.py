"""What every router uses: the caller (from the bearer token), the app's service and admission,
the checked path parameters, bodies read within a limit, and the documented error answers."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Header, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ValidationError

from tessera.api.messages import NAME_PATTERN, ErrorBody
from tessera.api.protocol import MAX_NUMBER
from tessera.errors import MalformedContribution, PayloadTooLarge
from tessera.hub.admission import Admission
from tessera.hub.auth import Principal
from tessera.hub.service import HubService

Token = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
# Path parameters are checked here, so that no lookup ever sees control characters.
HexId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="a 32-hex-digit id")]
RunId = HexId
Sha = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="a blob's sha256")]
Name = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=200, description="a provider's name or id")]
Number = Annotated[int, PathParam(ge=0, le=MAX_NUMBER, description="a version number")]

HTTP_ERRORS = {
    400: "bad input: the detail names the setting to fix",
    401: "no valid token",
    403: "the token lacks the right, or a quota is reached",
    404: "not found",
    409: "lease or contribution conflict: lease again",
    413: "body too large",
    422: "invalid request or contribution",
    429: "too many at once: retry after the Retry-After header's seconds",
    503: "the hub's database is unavailable: retry after the Retry-After header's seconds",
}
COMMON_ERRORS = (400, 401, 403, 404, 422, 503)  # added to every operation by the published schema
# Bodies that are not JSON, documented for the published schema.
BINARY = {"schema": {"type": "string", "format": "binary"}}
BINARY_REPLY: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": BINARY}, "description": "the bytes"}
}


def error_docs(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented answers of an operation's own error codes (beyond ``COMMON_ERRORS``)."""
    return {code: {"model": ErrorBody, "description": HTTP_ERRORS[code]} for code in codes}


def service_of(request: Request) -> HubService:
    service: HubService = request.app.state.service
    return service


def admission_of(request: Request) -> Admission:
    admission: Admission = request.app.state.admission
    return admission


Service = Annotated[HubService, Depends(service_of)]
Admitted = Annotated[Admission, Depends(admission_of)]


def bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


async def current_principal(request: Request, authorization: Token = None) -> Principal:
    """The provider behind the request's bearer token (401 without a valid one). A missing or
    malformed token is refused without a thread; the lookup runs on the authentication pool."""
    service = service_of(request)
    token = service.providers.check_format(bearer(authorization))
    limiter: anyio.CapacityLimiter = request.app.state.auth_limiter
    return await anyio.to_thread.run_sync(service.providers.principal, token, limiter=limiter)


Who = Annotated[Principal, Depends(current_principal)]


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes before storing it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


Meta = TypeVar("Meta", bound=BaseModel)


def parse_header(model: type[Meta], raw: str | None, header: str, what: str) -> Meta:
    """The JSON metadata beside an upload's body, from its header; 422 naming what is wrong."""
    if not raw:
        raise MalformedContribution(f"missing {header} header with the {what}'s JSON metadata")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise MalformedContribution(
            f"{header} header is invalid: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}"
        ) from exc
