"""HTTP routes of the hub (FastAPI). They translate; the service decides."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from tessera.errors import MalformedContribution, PayloadTooLarge, TesseraError
from tessera.hub.schemas import (
    ContributionInfo,
    ContributionMeta,
    ContributionReply,
    CreateRunReply,
    LeaseReply,
    LeaseRequest,
    RegisterReply,
    RegisterRequest,
    RoundMetrics,
    RunStatus,
    VersionInfo,
)
from tessera.hub.service import HubService
from tessera.hub.state import State
from tessera.hub.store import FileBlobStore

log = logging.getLogger(__name__)
MAX_RECIPE_BYTES = 1 << 20
META_HEADER = "X-Tessera-Contribution"
Token = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]


def open_service(home: Path, database_url: str | None = None) -> HubService:
    """A hub service on ``home`` (SQLite file and blob folder) or on a given database."""
    home.mkdir(parents=True, exist_ok=True)
    state = State(database_url or f"sqlite:///{home / 'hub.sqlite'}")
    return HubService(state, FileBlobStore(home / "blobs"))


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
    add_run_routes(app, service)
    add_worker_routes(app, service)
    return app


def add_run_routes(app: FastAPI, service: HubService) -> None:
    @app.post("/v1/runs", status_code=201, response_model=CreateRunReply)
    async def create_run(request: Request) -> CreateRunReply:
        """Create a run from a recipe (TOML in the body)."""
        body = await read_limited(request, MAX_RECIPE_BYTES)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TesseraError("recipe must be UTF-8 TOML text") from exc
        return await run_in_threadpool(service.create_run, text)

    @app.get("/v1/runs", response_model=list[RunStatus])
    def list_runs() -> list[RunStatus]:
        return [service.status(run_id) for run_id in service.run_ids()]

    @app.get("/v1/runs/{run_id}", response_model=RunStatus)
    def run_status(run_id: str) -> RunStatus:
        return service.status(run_id)

    @app.get("/v1/runs/{run_id}/rounds", response_model=list[RoundMetrics])
    def run_rounds(run_id: str) -> list[RoundMetrics]:
        return service.rounds(run_id)

    @app.get("/v1/runs/{run_id}/contributions", response_model=list[ContributionInfo])
    def contributions(run_id: str, round: int | None = None) -> list[ContributionInfo]:
        """Contributions with status and rejection reasons (optionally of one round)."""
        return service.contributions(run_id, round)

    @app.get("/v1/runs/{run_id}/versions/latest", response_model=VersionInfo)
    def latest_version(run_id: str) -> VersionInfo:
        return service.version(run_id)

    @app.get("/v1/runs/{run_id}/versions/{number}", response_model=VersionInfo)
    def version(run_id: str, number: int) -> VersionInfo:
        return service.version(run_id, number)


def add_worker_routes(app: FastAPI, service: HubService) -> None:
    @app.get("/v1/runs/{run_id}/blobs/{sha}", response_class=Response)
    def blob(run_id: str, sha: str, authorization: Token = None) -> Response:
        """Download a version's safetensors blob."""
        service.authenticate(run_id, bearer(authorization))
        return Response(service.download(run_id, sha), media_type="application/octet-stream")

    @app.post("/v1/runs/{run_id}/workers", status_code=201, response_model=RegisterReply)
    def register(run_id: str, req: RegisterRequest, authorization: Token = None) -> RegisterReply:
        service.authenticate(run_id, bearer(authorization))
        return service.register(run_id, req.name)

    @app.post("/v1/runs/{run_id}/leases", response_model=LeaseReply)
    def lease(run_id: str, req: LeaseRequest, authorization: Token = None) -> LeaseReply:
        service.authenticate(run_id, bearer(authorization))
        return service.lease(run_id, req.worker_id, req.wait_s)

    @app.post("/v1/runs/{run_id}/contributions", response_model=ContributionReply)
    async def contribute(
        run_id: str,
        request: Request,
        authorization: Token = None,
        meta_header: Annotated[str | None, Header(alias=META_HEADER)] = None,
    ) -> ContributionReply:
        """Upload a contribution: safetensors body, JSON metadata in the header."""
        await run_in_threadpool(service.authenticate, run_id, bearer(authorization))
        meta = parse_meta(meta_header)
        limit = await run_in_threadpool(service.upload_limit, run_id)
        body = await read_limited(request, limit)
        return await run_in_threadpool(service.submit, run_id, meta, body)
