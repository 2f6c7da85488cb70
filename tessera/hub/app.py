"""HTTP routes of the hub (FastAPI). They translate; the service decides.

Every route needs a token and documents its request body and error answers (``ErrorBody``) in
the published schema, which is itself served behind a token (or public, or not at all: the
hub's ``[api] docs``). Authentication runs on its own small thread pool, so a request without a
valid token is answered at once however busy the hub is; a lease request that waits for a round
to close waits on the event loop, holding no thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from tessera.api.messages import (
    NAME_PATTERN,
    ContributionInfo,
    ContributionMeta,
    ContributionReply,
    CreatedProvider,
    CreateProviderRequest,
    CreateRunReply,
    ErrorBody,
    LeaseReply,
    LeaseRequest,
    LedgerReport,
    MemberRequest,
    MergeReply,
    MergeRequest,
    ProbeReply,
    ProviderInfo,
    RegisterReply,
    RegisterRequest,
    RoundMetrics,
    RunStatus,
    TokenReply,
    TokenRequest,
    VersionInfo,
)
from tessera.api.protocol import MAX_NUMBER, MAX_PROBE_BYTES, META_HEADER
from tessera.blobs import FileBlobStore
from tessera.errors import MalformedContribution, PayloadTooLarge, TesseraError, TooManyRequests
from tessera.hub.admission import Admission
from tessera.hub.auth import Principal
from tessera.hub.config import HubConfig
from tessera.hub.providers import ProviderService
from tessera.hub.service import HubService
from tessera.hub.state import State, private_file

log = logging.getLogger(__name__)
PROBE_CHUNK = 1 << 20
AUTH_THREADS = 4
Token = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
# Path parameters are checked here, so that no lookup ever sees control characters.
HexId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="a 32-hex-digit id")]
RunId = HexId
Sha = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="a blob's sha256")]
Name = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=200, description="a provider's name or id")]
Number = Annotated[int, PathParam(ge=0, le=MAX_NUMBER, description="a version number")]


def error_docs(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": HTTP_ERRORS[code]} for code in codes}


HTTP_ERRORS = {
    400: "bad input: the detail names the setting to fix",
    401: "no valid token",
    403: "the token lacks the right, or a quota is reached",
    404: "not found",
    409: "lease or contribution conflict: lease again",
    413: "body too large",
    422: "invalid request or contribution",
    429: "too many at once: retry after the Retry-After header's seconds",
}
COMMON_ERRORS = (400, 401, 403, 404, 422)
# Bodies that are not JSON, documented for the published schema.
BINARY = {"schema": {"type": "string", "format": "binary"}}
TOML_BODY = {
    "requestBody": {"required": True, "content": {"application/toml": {"schema": {"type": "string"}}}}
}
BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": BINARY}}}
PROBE_BODY = {"requestBody": {"required": False, "content": {"application/octet-stream": BINARY}}}
BINARY_REPLY: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": BINARY}, "description": "the bytes"}
}


def open_service(home: Path, database_url: str | None = None, config: HubConfig | None = None) -> HubService:
    """A hub service on ``home`` (SQLite file and blob folder, private to this user) or on a
    given database."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    state = State(database_url or f"sqlite:///{home / 'hub.sqlite'}")
    blobs = home / "blobs"
    blobs.mkdir(mode=0o700, exist_ok=True)
    return HubService(state, FileBlobStore(blobs), config=config)


def admin_token(service: HubService, home: Path) -> str | None:
    """The first admin's token: created on a new hub and kept in ``home/admin.token`` (mode 600)."""
    path = home / "admin.token"
    token = service.providers.bootstrap_admin()
    if token is not None:
        private_file(path)
        path.write_text(token + "\n")
        return token
    return path.read_text().strip() if path.exists() else None


def bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


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


async def current_principal(request: Request, authorization: Token = None) -> Principal:
    """The provider behind the request's bearer token (401 without a valid one). A missing or
    malformed token is refused without a thread; the lookup runs on the authentication pool."""
    service: HubService = request.app.state.service
    token = service.providers.check_format(bearer(authorization))
    limiter: anyio.CapacityLimiter = request.app.state.auth_limiter
    return await anyio.to_thread.run_sync(service.providers.principal, token, limiter=limiter)


Who = Annotated[Principal, Depends(current_principal)]


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "detail": detail})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TesseraError)
    async def tessera_error(_: Request, exc: TesseraError) -> JSONResponse:
        response = error_response(exc.http_status, exc.code, str(exc))
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing's own answers (404, 405) in the hub's error format; a 405 lists every method of
        the path (Starlette's lists only those of the first route that matched it)."""
        response = error_response(exc.status_code, "http_error", str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            methods = sorted(
                {
                    m
                    for r in app.routes
                    if isinstance(r, Route) and r.methods and r.matches(request.scope)[0] != Match.NONE
                    for m in r.methods
                }
            )
            response.headers["Allow"] = ", ".join(methods)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(parts))


def parse_meta(raw: str | None) -> ContributionMeta:
    if not raw:
        raise MalformedContribution(f"missing {META_HEADER} header with the contribution's JSON metadata")
    try:
        return ContributionMeta.model_validate_json(raw)
    except ValidationError as exc:
        raise MalformedContribution(
            f"{META_HEADER} header is invalid: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}"
        ) from exc


def deadline_ticker(service: HubService, tick_s: float, stop: threading.Event) -> None:
    """Close due rounds every ``tick_s``; a run's failure is recorded on the run by the service."""
    while not stop.wait(tick_s):
        try:
            service.close_due_rounds()
        except Exception:  # the database itself: logged, and the ticker goes on
            log.exception("closing due rounds failed")


def create_app(service: HubService, tick_s: float | None = 1.0) -> FastAPI:
    """The hub's ASGI app; ``tick_s`` is how often deadlines are checked (None: never)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        if tick_s is not None:
            threading.Thread(
                target=deadline_ticker, args=(service, tick_s, stop), name="tessera-deadlines", daemon=True
            ).start()
        yield
        stop.set()

    public = service.config.api_docs == "public"
    app = FastAPI(
        title="tessera hub",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json" if public else None,
        docs_url="/docs" if public else None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.openapi = lambda: published_schema(app)  # type: ignore[method-assign]

    app.state.service = service
    app.state.admission = Admission(service.limits)
    app.state.auth_limiter = anyio.CapacityLimiter(AUTH_THREADS)
    add_run_routes(app, service)
    add_worker_routes(app, service)
    add_provider_routes(app, service.providers)
    if service.config.api_docs == "token":
        add_schema_route(app)
    return app


def published_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI schema with the errors every route may answer (``COMMON_ERRORS``, as
    ``ErrorBody``) added to each operation; built once, on first request (cheaper than declaring
    them route by route when the app is made)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for operations in schema["paths"].values():
            for operation in operations.values():
                for code in COMMON_ERRORS:
                    operation["responses"][str(code)] = {"description": HTTP_ERRORS[code], "content": body}
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = schema
    return app.openapi_schema


def add_schema_route(app: FastAPI) -> None:
    @app.get("/openapi.json", include_in_schema=False)
    def openapi(who: Who) -> JSONResponse:
        """The published schema, for holders of a token."""
        return JSONResponse(app.openapi())


def add_run_routes(app: FastAPI, service: HubService) -> None:
    @app.post(
        "/v1/runs",
        status_code=201,
        response_model=CreateRunReply,
        openapi_extra=TOML_BODY,
        responses=error_docs(413, 429),
    )
    async def create_run(request: Request, who: Who) -> CreateRunReply:
        """Create a run from a recipe (TOML in the body); the caller becomes its owner."""
        body = await read_limited(request, service.limits.max_recipe_bytes)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TesseraError("recipe must be UTF-8 TOML text") from exc
        if "\x00" in text:
            raise TesseraError("recipe contains a NUL character; send plain TOML text")
        admission: Admission = request.app.state.admission
        with admission.creating_run(who):
            return await run_in_threadpool(service.create_run, who, text)

    @app.get("/v1/runs", response_model=list[RunStatus])
    def list_runs(who: Who) -> list[RunStatus]:
        return [service.status(run_id, who) for run_id in service.run_ids(who)]

    @app.get("/v1/runs/{run_id}", response_model=RunStatus)
    def run_status(run_id: RunId, who: Who) -> RunStatus:
        return service.status(run_id, who)

    @app.get("/v1/runs/{run_id}/rounds", response_model=list[RoundMetrics])
    def run_rounds(run_id: RunId, who: Who) -> list[RoundMetrics]:
        return service.rounds(run_id, who)

    @app.get("/v1/runs/{run_id}/contributions", response_model=list[ContributionInfo])
    def contributions(
        run_id: RunId, who: Who, round: Annotated[int | None, Query(ge=0, le=MAX_NUMBER)] = None
    ) -> list[ContributionInfo]:
        """Contributions with status and rejection reasons (optionally of one round)."""
        return service.contributions(run_id, who, round)

    @app.get("/v1/runs/{run_id}/versions/latest", response_model=VersionInfo)
    def latest_version(run_id: RunId, who: Who) -> VersionInfo:
        return service.version(run_id, who)

    @app.get("/v1/runs/{run_id}/versions/{number}", response_model=VersionInfo)
    def version(run_id: RunId, number: Number, who: Who) -> VersionInfo:
        return service.version(run_id, who, number)


def add_worker_routes(app: FastAPI, service: HubService) -> None:
    @app.get("/v1/runs/{run_id}/blobs/{sha}", response_class=Response, responses=BINARY_REPLY)
    def blob(run_id: RunId, sha: Sha, who: Who) -> Response:
        """Download a version's safetensors blob."""
        return Response(service.download(run_id, who, sha), media_type="application/octet-stream")

    @app.post("/v1/runs/{run_id}/merges", response_model=MergeReply, responses=error_docs(409))
    def merge(run_id: RunId, req: MergeRequest, who: Who) -> MergeReply:
        return service.merges.merge(run_id, who, req)

    @app.get("/v1/runs/{run_id}/merges", response_model=list[MergeReply])
    def merges(run_id: RunId, who: Who) -> list[MergeReply]:
        return service.merges.history(run_id, who)

    @app.post("/v1/runs/{run_id}/workers", status_code=201, response_model=RegisterReply)
    def register(run_id: RunId, req: RegisterRequest, who: Who) -> RegisterReply:
        return service.register(run_id, who, req.name, req.module, req.ranks)

    @app.post("/v1/runs/{run_id}/leases", response_model=LeaseReply, responses=error_docs(429))
    async def lease(run_id: RunId, req: LeaseRequest, request: Request, who: Who) -> LeaseReply:
        """A lease on the current round; a worker that contributed to it already waits up to
        ``wait_s`` for the next (at most ``limits.max_waiting_leases`` per provider at once)."""
        since = service.rounds_closed.generation
        reply = await run_in_threadpool(service.try_lease, run_id, who, req.worker_id)
        if reply.status != "wait" or req.wait_s <= 0:
            return reply
        admission: Admission = request.app.state.admission
        give_up = time.monotonic() + req.wait_s
        with admission.waiting_lease(who):
            while reply.status == "wait" and (remaining := give_up - time.monotonic()) > 0:
                await service.rounds_closed.wait_async(since, remaining)
                since = service.rounds_closed.generation
                reply = await run_in_threadpool(service.try_lease, run_id, who, req.worker_id)
        return reply

    @app.post(
        "/v1/runs/{run_id}/contributions",
        response_model=ContributionReply,
        openapi_extra=BINARY_BODY,
        responses=error_docs(409, 413),
    )
    async def contribute(
        run_id: RunId,
        request: Request,
        who: Who,
        meta_header: Annotated[str | None, Header(alias=META_HEADER)] = None,
    ) -> ContributionReply:
        """Upload a contribution: safetensors body, JSON metadata in the header."""
        await run_in_threadpool(service.authorize, run_id, who)
        meta = parse_meta(meta_header)
        limit = await run_in_threadpool(service.upload_limit, run_id)
        body = await read_limited(request, limit)
        return await run_in_threadpool(service.submit, run_id, who, meta, body)


def add_provider_routes(app: FastAPI, providers: ProviderService) -> None:
    @app.get("/v1/ledger", response_model=LedgerReport)
    def ledger(request: Request, who: Who) -> LedgerReport:
        """Credited compute per provider and per collective that the caller may read."""
        service: HubService = request.app.state.service
        return service.ledger.report(who)

    @app.get("/v1/probe", response_class=StreamingResponse, responses={**BINARY_REPLY, **error_docs(429)})
    def probe_download(
        request: Request, who: Who, nbytes: Annotated[int, Query(ge=0, le=MAX_PROBE_BYTES)] = 0
    ) -> StreamingResponse:
        """``nbytes`` zero bytes, streamed, for ``tessera probe`` to time latency and download
        bandwidth (within the provider's probe budget)."""
        admission: Admission = request.app.state.admission
        admission.spend_probe(who, nbytes)

        def zeros() -> Iterator[bytes]:
            chunk, left = bytes(min(PROBE_CHUNK, nbytes)), nbytes
            while left > 0:
                yield chunk[: min(left, PROBE_CHUNK)]
                left -= PROBE_CHUNK

        headers = {"Content-Length": str(nbytes)}
        return StreamingResponse(zeros(), media_type="application/octet-stream", headers=headers)

    @app.post(
        "/v1/probe", response_model=ProbeReply, openapi_extra=PROBE_BODY, responses=error_docs(413, 429)
    )
    async def probe_upload(request: Request, who: Who) -> ProbeReply:
        """Count and discard the body as it arrives, for ``tessera probe`` to time upload
        bandwidth (within the provider's probe budget; nothing is kept in memory)."""
        declared = request.headers.get("content-length")
        size = int(declared) if declared and declared.isdigit() else MAX_PROBE_BYTES
        if size > MAX_PROBE_BYTES:
            raise PayloadTooLarge(f"probe of {size} bytes exceeds the limit of {MAX_PROBE_BYTES} bytes")
        admission: Admission = request.app.state.admission
        admission.spend_probe(who, size)
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > MAX_PROBE_BYTES:
                raise PayloadTooLarge(f"probe body exceeds the limit of {MAX_PROBE_BYTES} bytes")
        return ProbeReply(nbytes=received)

    @app.get("/v1/whoami", response_model=ProviderInfo)
    def whoami(who: Who) -> ProviderInfo:
        return providers.describe(who, who.provider_id)

    @app.post("/v1/providers", status_code=201, response_model=CreatedProvider, responses=error_docs(409))
    def create_provider(req: CreateProviderRequest, who: Who) -> CreatedProvider:
        """Create a provider (a collective too) and its first token (hub admins only)."""
        return providers.create_provider(who, req.name, req.kind, req.is_admin)

    @app.post("/v1/providers/{collective}/members", response_model=ProviderInfo, responses=error_docs(409))
    def add_member(collective: Name, req: MemberRequest, who: Who) -> ProviderInfo:
        return providers.add_member(who, providers.find(collective), providers.find(req.member))

    @app.post("/v1/providers/{provider}/tokens", status_code=201, response_model=TokenReply)
    def create_token(provider: Name, req: TokenRequest, who: Who) -> TokenReply:
        return providers.create_token(who, providers.find(provider), req.label)

    @app.delete("/v1/tokens/{token_id}", status_code=204, response_class=Response)
    def revoke_token(token_id: HexId, who: Who) -> Response:
        providers.revoke_token(who, token_id)
        return Response(status_code=204)
