"""The hub client's answer to failures: a network error or a 502-504 is retried (the hub may be
restarting behind a proxy, or its database reconnecting), a 500 is not (the same request fails
the same way: the hub's log says why), and a 4xx is the request's own error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.blobs import FileBlobStore
from tessera.errors import HubFailed, HubUnavailable, NotFound
from tessera.hub.app import create_app
from tessera.hub.config import HubConfig
from tessera.hub.service import HubService
from tessera.hub.state import State
from tests.helpers import FakeClock

pytestmark = pytest.mark.timeout(60)


def answering(*answers: int) -> tuple[TestClient, list[int]]:
    """A server whose /v1/whoami gives these statuses in turn (then 200); the statuses it gave."""
    app, given = FastAPI(), []

    @app.get("/v1/whoami")
    def whoami() -> object:
        status = answers[len(given)] if len(given) < len(answers) else 200
        given.append(status)
        if status == 200:
            return {
                "provider_id": "a" * 32,
                "name": "a",
                "kind": "person",
                "is_admin": False,
                "collectives": [],
            }
        if status == 500:
            return PlainTextResponse("Internal Server Error", status_code=500)
        return JSONResponse({"error": "not_found" if status == 404 else "x", "detail": "d"}, status)

    return TestClient(app), given


def test_a_500_is_told_at_once_and_not_retried() -> None:
    http, given = answering(500)
    with pytest.raises(HubFailed, match="failed on GET /v1/whoami .HTTP 500.*the hub's log says why"):
        HubClient(http, "t", retry_s=30).whoami()
    assert given == [500]


def test_gateway_errors_are_retried_and_a_4xx_is_the_requests_own() -> None:
    http, given = answering(503, 502)
    assert HubClient(http, "t", retry_s=30).whoami().name == "a"
    assert given == [503, 502, 200]
    http, given = answering(404)
    with pytest.raises(NotFound):
        HubClient(http, "t", retry_s=30).whoami()
    http, given = answering(503, 503, 503)
    with pytest.raises(HubUnavailable, match="unreachable .HTTP 503"):
        HubClient(http, "t", retry_s=0.3).whoami()


@pytest.fixture
def lost_database(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """A hub whose SQLite database folder disappears after it started, and its admin token."""
    folder = tmp_path / "db"
    folder.mkdir()
    service = HubService(State(f"sqlite:///{folder / 'hub.sqlite'}"), FileBlobStore(tmp_path / "blobs"),
                         FakeClock(), HubConfig())  # fmt: skip
    token = service.providers.bootstrap_admin()
    assert token is not None
    with TestClient(create_app(service, tick_s=None), raise_server_exceptions=False) as http:
        service.state.engine.dispose()
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
        yield http, token
    service.state.close()


def test_a_hub_whose_database_is_unavailable_answers_503_to_retry(
    lost_database: tuple[TestClient, str],
) -> None:
    http, token = lost_database
    response = http.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json() == {
        "error": "database_unavailable",
        "detail": "the hub's database is unavailable; retry",
    }
