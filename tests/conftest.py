"""Shared fixtures: a small text corpus, the trust of a test's hub and workers, the database
(SQLite and PostgreSQL) and an in-process hub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.blobs import FileBlobStore
from tessera.hub.app import create_app
from tessera.hub.config import HubConfig
from tessera.hub.service import HubService
from tessera.hub.state import State
from tessera.testing.corpus import write_corpus
from tessera.trust import Trust
from tests.helpers import FakeClock, postgres_url, reading


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def trust(corpus_dir: Path) -> Trust:
    return reading(corpus_dir)


@pytest.fixture(autouse=True)
def ieee_floats() -> Iterator[None]:
    """Tests that run the CLI in this process flush denormal floats to zero (tessera's torch
    setting); the next test gets IEEE floats again (Hypothesis needs them)."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test using the hub's state runs on SQLite and on PostgreSQL (the contract suite)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.sqlite'}"
    return postgres_url()


@pytest.fixture
def service(database_url: str, tmp_path: Path, clock: FakeClock, trust: Trust) -> Iterator[HubService]:
    svc = HubService(State(database_url), FileBlobStore(tmp_path / "blobs"), clock, HubConfig(trust=trust))
    yield svc
    svc.state.close()


@pytest.fixture
def http(service: HubService) -> Iterator[TestClient]:
    with TestClient(create_app(service, tick_s=None), raise_server_exceptions=True) as client:
        yield client


@pytest.fixture
def admin(http: TestClient, service: HubService) -> HubClient:
    """A client with the hub's first admin token."""
    token = service.providers.bootstrap_admin()
    assert token is not None
    return HubClient(http, token, retry_s=0.0)
