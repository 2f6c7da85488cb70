"""HTTP routes of the hub (FastAPI). They translate; the service decides."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from tessera.errors import MalformedContribution, PayloadTooLarge, TesseraError
from tessera.hub.auth import Principal
from tessera.hub.providers import ProviderService
from tessera.hub.schemas import (
    NAME_PATTERN,
    ContributionInfo,
    ContributionMeta,
    ContributionReply,
    CreatedProvider,
    CreateProviderRequest,
    CreateRunReply,
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
from tessera.hub.service import HubService
from tessera.hub.state import State
from tessera.hub.store import FileBlobStore

log = logging.getLogger(__name__)
MAX_RECIPE_BYTES = 1 << 20
MAX_PROBE_BYTES = 64 << 20
META_HEADER = "X-Tessera-Contribution"
Token = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]
# Path parameters are checked here, so that no lookup ever sees control characters.
HexId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="a 32-hex-digit id")]
RunId = HexId
Sha = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="a blob's sha256")]
Name = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=200, description="a provider's name or id")]


def open_service(home: Path, database_url: str | None = None) -> HubService:
    """A hub service on ``home`` (SQLite file and blob folder) or on a given database."""
    home.mkdir(parents=True, exist_ok=True)
    state = State(database_url or f"sqlite:///{home / 'hub.sqlite'}")
    return HubService(state, FileBlobStore(home / "blobs"))


def admin_token(service: HubService, home: Path) -> str | None:
    """The first admin's token: created on a new hub and kept in ``home/admin.token`` (mode 600)."""
    path = home / "admin.token"
    token = service.providers.bootstrap_admin()
    if token is not None:
        path.touch(mode=0o600)
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


def current_principal(request: Request, authorization: Token = None) -> Principal:
    """The provider behind the request's bearer token (401 without a valid one)."""
    service: HubService = request.app.state.service
    return service.providers.principal(bearer(authorization))


Who = Annotated[Principal, Depends(current_principal)]


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "detail": detail})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TesseraError)
    async def tessera_error(_: Request, exc: TesseraError) -> JSONResponse:
        return error_response(exc.http_status, exc.code, str(exc))

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
    while not stop.wait(tick_s):
        try:
            service.close_due_rounds()
        except Exception:  # the ticker must survive a failing round close; it is logged
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

    app = FastAPI(title="tessera hub", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)

    app.state.service = service
    add_run_routes(app, service)
    add_worker_routes(app, service)
    add_provider_routes(app, service.providers)
    return app


def add_run_routes(app: FastAPI, service: HubService) -> None:
    @app.post("/v1/runs", status_code=201, response_model=CreateRunReply)
    async def create_run(request: Request, who: Who) -> CreateRunReply:
        """Create a run from a recipe (TOML in the body); the caller becomes its owner."""
        body = await read_limited(request, MAX_RECIPE_BYTES)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TesseraError("recipe must be UTF-8 TOML text") from exc
        if "\x00" in text:
            raise TesseraError("recipe contains a NUL character; send plain TOML text")
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
    def contributions(run_id: RunId, who: Who, round: int | None = None) -> list[ContributionInfo]:
        """Contributions with status and rejection reasons (optionally of one round)."""
        return service.contributions(run_id, who, round)

    @app.get("/v1/runs/{run_id}/versions/latest", response_model=VersionInfo)
    def latest_version(run_id: RunId, who: Who) -> VersionInfo:
        return service.version(run_id, who)

    @app.get("/v1/runs/{run_id}/versions/{number}", response_model=VersionInfo)
    def version(run_id: RunId, number: int, who: Who) -> VersionInfo:
        return service.version(run_id, who, number)


def add_worker_routes(app: FastAPI, service: HubService) -> None:
    @app.get("/v1/runs/{run_id}/blobs/{sha}", response_class=Response)
    def blob(run_id: RunId, sha: Sha, who: Who) -> Response:
        """Download a version's safetensors blob."""
        return Response(service.download(run_id, who, sha), media_type="application/octet-stream")

    @app.post("/v1/runs/{run_id}/merges", response_model=MergeReply)
    def merge(run_id: RunId, req: MergeRequest, who: Who) -> MergeReply:
        return service.merges.merge(run_id, who, req)

    @app.get("/v1/runs/{run_id}/merges", response_model=list[MergeReply])
    def merges(run_id: RunId, who: Who) -> list[MergeReply]:
        return service.merges.history(run_id, who)

    @app.post("/v1/runs/{run_id}/workers", status_code=201, response_model=RegisterReply)
    def register(run_id: RunId, req: RegisterRequest, who: Who) -> RegisterReply:
        return service.register(run_id, who, req.name, req.module)

    @app.post("/v1/runs/{run_id}/leases", response_model=LeaseReply)
    def lease(run_id: RunId, req: LeaseRequest, who: Who) -> LeaseReply:
        return service.lease(run_id, who, req.worker_id, req.wait_s)

    @app.post("/v1/runs/{run_id}/contributions", response_model=ContributionReply)
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

    @app.get("/v1/probe", response_class=Response)
    def probe_download(who: Who, nbytes: Annotated[int, Query(ge=0, le=MAX_PROBE_BYTES)] = 0) -> Response:
        """``nbytes`` zero bytes, for ``tessera probe`` to time latency and download bandwidth."""
        return Response(bytes(nbytes), media_type="application/octet-stream")

    @app.post("/v1/probe", response_model=ProbeReply)
    async def probe_upload(request: Request, who: Who) -> ProbeReply:
        """Read and discard the body, for ``tessera probe`` to time upload bandwidth."""
        return ProbeReply(nbytes=len(await read_limited(request, MAX_PROBE_BYTES)))

    @app.get("/v1/whoami", response_model=ProviderInfo)
    def whoami(who: Who) -> ProviderInfo:
        return providers.describe(who, who.provider_id)

    @app.post("/v1/providers", status_code=201, response_model=CreatedProvider)
    def create_provider(req: CreateProviderRequest, who: Who) -> CreatedProvider:
        """Create a provider (a collective too) and its first token (hub admins only)."""
        return providers.create_provider(who, req.name, req.kind, req.is_admin)

    @app.post("/v1/providers/{collective}/members", response_model=ProviderInfo)
    def add_member(collective: Name, req: MemberRequest, who: Who) -> ProviderInfo:
        return providers.add_member(who, providers.find(collective), providers.find(req.member))

    @app.post("/v1/providers/{provider}/tokens", status_code=201, response_model=TokenReply)
    def create_token(provider: Name, req: TokenRequest, who: Who) -> TokenReply:
        return providers.create_token(who, providers.find(provider), req.label)

    @app.delete("/v1/tokens/{token_id}", status_code=204, response_class=Response)
    def revoke_token(token_id: HexId, who: Who) -> Response:
        providers.revoke_token(who, token_id)
        return Response(status_code=204)
