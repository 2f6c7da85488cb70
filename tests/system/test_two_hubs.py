"""Two hub processes serving one run on one PostgreSQL database corrupt nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tessera.api.client import HubClient
from tessera.hub.state import State
from tessera.hub.tables import Contribution, Version
from tessera.testing.cluster import free_port, run_loops, start_hub
from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSettings
from tests.helpers import postgres_url, reading, tiny_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def database_url() -> str:
    return postgres_url()  # several hub processes on one database: PostgreSQL only


@pytest.fixture
def two_hubs(database_url: str, tmp_path: Path, corpus_dir: Path) -> Iterator[tuple[str, str]]:
    procs, urls = [], []
    for _ in range(2):  # one after the other: the first creates the admin
        port = free_port()
        procs.append(
            start_hub(tmp_path / "hub", port, "--data-root", str(corpus_dir), database_url=database_url)
        )
        urls.append(f"http://127.0.0.1:{port}")
    try:
        yield urls[0], urls[1]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def test_concurrent_uploads_through_two_hubs(
    two_hubs: tuple[str, str], database_url: str, corpus_dir: Path, tmp_path: Path
) -> None:
    a, b = two_hubs
    admin_token = (tmp_path / "hub" / "admin.token").read_text().strip()
    with HubClient.connect(a, admin_token) as admin:
        created = admin.create_run(tiny_recipe(corpus_dir, rounds=3, quorum=4, inner_steps=2))
        tokens = [admin.create_provider(f"site-{i}").token for i in range(4)]
    urls = (a, b, a, b)
    clients = [HubClient.connect(url, t, run_id=created.run_id) for url, t in zip(urls, tokens, strict=True)]
    loops = [
        WorkLoop(c, WorkerSettings(tmp_path / f"w{i}", name=f"w{i}", wait_s=5, trust=reading(corpus_dir)))
        for i, c in enumerate(clients)
    ]
    errors = run_loops(loops)
    for c in clients:
        c.close()
    assert not errors, errors
    with HubClient.connect(b, admin_token) as reader:
        status, rounds = reader.status(created.run_id), reader.rounds(created.run_id)
    assert status.status == "finished" and status.workers == 4
    assert [r.accepted for r in rounds] == [4, 4, 4] and all(r.close_reason == "quorum" for r in rounds)
    state = State(database_url)
    with state.transaction() as s:
        versions = s.scalars(
            select(Version).where(Version.run_id == created.run_id).order_by(Version.number)
        ).all()
        accepted = s.scalar(
            select(func.count()).select_from(Contribution).where(Contribution.status == "accepted")
        )
        assert [v.number for v in versions] == [0, 1, 2, 3]  # one new version per round, no more
        assert accepted == 12 and sum(len(v.contributions) for v in versions) == 12
        for v in versions:
            blob = (tmp_path / "hub" / "blobs" / v.blob_sha[:2] / v.blob_sha).read_bytes()
            assert hashlib.sha256(blob).hexdigest() == v.blob_sha
    state.close()
