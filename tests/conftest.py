"""Shared fixtures: a small text corpus, a tiny recipe and an in-process hub."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, inspect, text
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.blobs import FileBlobStore
from tessera.hub.app import create_app
from tessera.hub.config import HubConfig
from tessera.hub.service import HubService
from tessera.hub.state import SCHEMA_VERSION, Base, State
from tessera.trust import Trust


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def write_corpus(root: Path) -> Path:
    for pkg in ("alpha", "beta", "gamma", "delta"):
        for i in range(25):
            f = root / pkg / f"mod{i}.py"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(
                f'"""Module {i} of {pkg}."""\n\n' + f"def {pkg}_{i}(x):\n    return x * {i}\n\n" * 15
            )
    return root


def tiny_recipe(
    data_path: Path,
    rounds: int = 3,
    quorum: int = 2,
    inner_steps: int = 3,
    extra_run: str = "",
    extra: str = "",
) -> str:
    return f"""
[run]
name = "tiny"
rounds = {rounds}
quorum = {quorum}
max_staleness = 1
{extra_run}

[model]
options = {{ context = 16, d_model = 16, n_layers = 1, n_heads = 2 }}

[data]
path = "{data_path}"
options = {{ context = 16, num_shards = 2 }}

[train]
inner_steps = {inner_steps}
batch_size = 4
lr = 0.01

[eval]
batch_size = 4
batches = 2
{extra}
"""


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def reading(folder: Path) -> Trust:
    """What a test's hub and workers trust: tessera's own factories, and recipes reading ``folder``."""
    return Trust.of(data_roots=[folder])


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


POSTGRES_URL = os.environ.get("TESSERA_TEST_DATABASE_URL")
REQUIRE_POSTGRES = os.environ.get("TESSERA_REQUIRE_POSTGRES") == "1"


def fresh_postgres(url: str) -> str:
    """Empty the test database so each test starts from nothing: its tables emptied when they are
    this schema's (fast), else dropped (a test may have left an older schema behind)."""
    engine = create_engine(url)
    tables = [t.name for t in Base.metadata.sorted_tables]
    with engine.begin() as conn:
        current = set(inspect(conn).get_table_names()) == set(tables) and conn.execute(
            text("SELECT value FROM tessera_meta WHERE key = 'schema_version'")
        ).scalar() == str(SCHEMA_VERSION)
        if current:
            emptied = ", ".join(t for t in tables if t != "tessera_meta")
            conn.execute(text(f"TRUNCATE {emptied} RESTART IDENTITY CASCADE"))
            conn.execute(text("DELETE FROM tessera_meta WHERE key <> 'schema_version'"))
    if not current:
        Base.metadata.drop_all(engine)
    engine.dispose()
    return url


def postgres_url() -> str:
    """An emptied PostgreSQL test database; skipped locally without one, failed in CI."""
    if POSTGRES_URL is None:
        if REQUIRE_POSTGRES:
            pytest.fail(
                "TESSERA_REQUIRE_POSTGRES=1 but TESSERA_TEST_DATABASE_URL is unset; run .ci/postgres.sh"
            )
        pytest.skip("PostgreSQL: set TESSERA_TEST_DATABASE_URL (bash .ci/postgres.sh prints one)")
    return fresh_postgres(POSTGRES_URL)


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
