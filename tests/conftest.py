"""Shared fixtures: a small text corpus, a tiny recipe and an in-process hub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tessera.hub.app import create_app
from tessera.hub.service import HubService
from tessera.hub.state import State
from tessera.hub.store import FileBlobStore
from tessera.worker.client import HubClient


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
    data_path: Path, rounds: int = 3, quorum: int = 2, inner_steps: int = 3, extra_run: str = ""
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
"""


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(tmp_path: Path, clock: FakeClock) -> Iterator[HubService]:
    svc = HubService(State(f"sqlite:///{tmp_path / 'hub.sqlite'}"), FileBlobStore(tmp_path / "blobs"), clock)
    yield svc
    svc.state.close()


@pytest.fixture
def http(service: HubService) -> Iterator[TestClient]:
    with TestClient(create_app(service, tick_s=None), raise_server_exceptions=True) as client:
        yield client


@pytest.fixture
def admin(http: TestClient) -> HubClient:
    return HubClient(http, retry_s=0.0)
