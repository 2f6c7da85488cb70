"""The hub's ASGI app (FastAPI): the routers of ``tessera.hub.routes``, the error answers, the
published schema, and the deadline ticker; and opening a hub's service on its folder.

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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from tessera.api.messages import ErrorBody
from tessera.blobs import FileBlobStore
from tessera.errors import TesseraError, TooManyRequests
from tessera.hub.admission import Admission
from tessera.hub.config import HubConfig
from tessera.hub.routes import (
    adapters,
    contributions,
    datasets,
    lineage,
    merges,
    pool,
    probe,
    providers,
    runs,
    workers,
)
from tessera.hub.routes.common import COMMON_ERRORS, HTTP_ERRORS, Who
from tessera.hub.service import HubService
from tessera.hub.state import State, private_file

log = logging.getLogger(__name__)
AUTH_THREADS = 4
ROUTERS = (
    runs.router,
    merges.router,
    adapters.router,
    datasets.router,
    lineage.router,
    workers.router,
    contributions.router,
    providers.router,
    pool.router,
    probe.router,
)


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

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def database_unavailable(_: Request, exc: DBAPIError) -> JSONResponse:
        """The database cannot answer now (a restart, a lost connection, SQLite busy past its
        timeout): 503, which clients retry; nothing was committed."""
        log.warning("database unavailable: %s", exc)
        response = error_response(503, "database_unavailable", "the hub's database is unavailable; retry")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(parts))


def deadline_ticker(service: HubService, tick_s: float, stop: threading.Event) -> None:
    """Close due rounds every ``tick_s``, and replay a contribution marked for it; a run's
    failure is recorded on the run by the service."""
    while not stop.wait(tick_s):
        try:
            service.close_due_rounds()
            service.verify_pending()
        except Exception:  # the database itself: logged, and the ticker goes on
            log.exception("closing due rounds or replaying contributions failed")


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
    app.state.upload_limiter = anyio.CapacityLimiter(service.limits.max_assessing)
    for router in ROUTERS:
        app.include_router(router)
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
