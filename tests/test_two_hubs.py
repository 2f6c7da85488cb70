"""Two hub processes serving one run on one PostgreSQL database corrupt nothing."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tessera.hub.state import Contribution, State, Version
from tessera.worker.client import HubClient
from tessera.worker.loop import WorkerSettings, WorkerSummary, WorkLoop
from tests.conftest import postgres_url, tiny_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hub process exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v1/runs", timeout=1).status_code == 401:  # up, and asks for a token
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError(f"hub at {url} did not come up")


def start_hub(home: Path, port: int, database_url: str) -> subprocess.Popen[bytes]:
    """A `tessera hub` process on 127.0.0.1:port, returned once it answers."""
    cmd = [
        sys.executable,
        "-m",
        "tessera",
        "hub",
        "--home",
        str(home),
        "--port",
        str(port),
        "--database",
        database_url,
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_up(f"http://127.0.0.1:{port}", proc)
    return proc


def run_loops(
    loops: list[WorkLoop], timeout: float = 180, on_done: Callable[[WorkerSummary], None] | None = None
) -> list[BaseException]:
    """Run work loops in threads until they end; return what any of them raised."""
    errors: list[BaseException] = []

    def work(loop: WorkLoop) -> None:
        try:
            summary = loop.run()
            if on_done is not None:
                on_done(summary)
        except BaseException as exc:  # returned to the test, which asserts on it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(loop,)) for loop in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return errors


@pytest.fixture
def database_url() -> str:
    return postgres_url()  # several hub processes on one database: PostgreSQL only


@pytest.fixture
def two_hubs(database_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    procs, urls = [], []
    for _ in range(2):  # one after the other: the first creates the admin
        port = free_port()
        procs.append(start_hub(tmp_path / "hub", port, database_url))
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
        WorkLoop(c, WorkerSettings(tmp_path / f"w{i}", name=f"w{i}", wait_s=5)) for i, c in enumerate(clients)
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
