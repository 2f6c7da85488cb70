"""Fault injection: workers and the hub are killed with SIGKILL at random points, many times.

The run must still finish, every stored version must match its sha256, and the ledger must
credit exactly the contributions that the versions committed, once each.
"""

from __future__ import annotations

import hashlib
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tessera.api.client import HubClient
from tessera.api.messages import ContributionMeta
from tessera.hub.state import State
from tessera.hub.tables import LedgerEntry, Version
from tessera.testing.cluster import ROOT, free_port, start_hub, wait_until
from tests.helpers import tiny_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
WORKER_KILLS = 24
HUB_KILLS_AT = {8, 16}


class Cluster:
    """One hub process and N worker processes on loopback, each restartable."""

    def __init__(self, home: Path, port: int, database_url: str, corpus: Path) -> None:
        self.home, self.port, self.database_url = home, port, database_url
        self.reads = ("--data-root", str(corpus))  # hub and workers read the test corpus
        self.url = f"http://127.0.0.1:{port}"
        self.hub = self.start_hub()
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.worker_args: dict[int, list[str]] = {}

    def start_hub(self) -> subprocess.Popen[bytes]:
        return start_hub(self.home / "hub", self.port, *self.reads, database_url=self.database_url)

    def kill_hub(self) -> None:
        self.hub.send_signal(signal.SIGKILL)
        self.hub.wait()
        self.hub = self.start_hub()

    def start_worker(self, i: int, token: str, run_id: str) -> None:
        self.worker_args[i] = [
            sys.executable,
            "-m",
            "tessera",
            "worker",
            "--hub",
            self.url,
            "--token",
            token,
            "--run",
            run_id,
            "--state-dir",
            str(self.home / f"w{i}"),
            "--threads",
            "1",
            *self.reads,
        ]
        self.restart_worker(i)

    def restart_worker(self, i: int) -> None:
        self.workers[i] = subprocess.Popen(
            self.worker_args[i], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def kill_worker(self, i: int) -> None:
        self.workers[i].send_signal(signal.SIGKILL)
        self.workers[i].wait()
        self.restart_worker(i)

    def stop(self) -> None:
        for proc in [*self.workers.values(), self.hub]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_status(url: str, token: str, run_id: str) -> str:
    try:
        with HubClient.connect(url, token, retry_s=0) as client:
            return client.status(run_id).status
    except Exception:  # the hub may be down between a kill and its restart
        return "unknown"


def test_run_survives_killed_workers_and_hub(tmp_path: Path, corpus_dir: Path, database_url: str) -> None:
    rng = random.Random(7)
    cluster = Cluster(tmp_path, free_port(), database_url, corpus_dir)
    admin_token = (tmp_path / "hub" / "admin.token").read_text().strip()
    try:
        with HubClient.connect(cluster.url, admin_token) as admin:
            recipe = tiny_recipe(
                corpus_dir,
                rounds=12,
                quorum=3,
                inner_steps=150,
                extra_run="round_deadline_s = 20\nlease_timeout_s = 30",
            )
            run_id = admin.create_run(recipe).run_id
            tokens = [admin.create_provider(f"node-{i}").token for i in range(3)]
        for i, token in enumerate(tokens):
            cluster.start_worker(i, token, run_id)
        kills_while_active = 0
        for k in range(1, WORKER_KILLS + 1):
            time.sleep(rng.uniform(0.3, 1.5))  # the faults' schedule: a random moment, not a wait
            cluster.kill_worker(rng.randrange(3))
            kills_while_active += run_status(cluster.url, admin_token, run_id) == "active"
            if k in HUB_KILLS_AT:
                cluster.kill_hub()
        finished = lambda: run_status(cluster.url, admin_token, run_id) == "finished"  # noqa: E731
        wait_until(finished, 300, "the run's end after the faults")
    finally:
        cluster.stop()
    assert kills_while_active >= 20  # the faults hit a live run, not a finished one
    state = State(database_url)
    with state.transaction() as s:
        versions = s.scalars(select(Version).where(Version.run_id == run_id).order_by(Version.number)).all()
        credited = [
            e.contribution_id
            for e in s.scalars(
                select(LedgerEntry).where(LedgerEntry.run_id == run_id, LedgerEntry.kind == "compute")
            )
        ]
    state.close()
    assert [v.number for v in versions] == list(range(13))
    committed = [cid for v in versions for cid in v.contributions]
    assert sorted(credited) == sorted(committed) and len(set(committed)) == len(committed)
    for v in versions:
        blob = (tmp_path / "hub" / "blobs" / v.blob_sha[:2] / v.blob_sha).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == v.blob_sha


def test_upload_cut_off_mid_transfer_leaves_nothing(
    tmp_path: Path, corpus_dir: Path, database_url: str
) -> None:
    cluster = Cluster(tmp_path, free_port(), database_url, corpus_dir)
    admin_token = (tmp_path / "hub" / "admin.token").read_text().strip()
    try:
        with HubClient.connect(cluster.url, admin_token) as admin:
            run_id = admin.create_run(tiny_recipe(corpus_dir)).run_id
            token = admin.create_provider("flaky").token
        with HubClient.connect(cluster.url, token, run_id=run_id) as worker:
            worker_id = worker.register("flaky").worker_id
            grant = worker.lease(worker_id).lease
        assert grant is not None
        meta = ContributionMeta(
            contribution_id=grant.lease_id,
            lease_id=grant.lease_id,
            worker_id=worker_id,
            tokens=10,
            steps=1,
            train_loss=1.0,
            compute_s=0.1,
        )
        blobs_before = sorted(p.name for p in (tmp_path / "hub" / "blobs").rglob("*") if p.is_file())
        with socket.create_connection(("127.0.0.1", cluster.port)) as sock:
            head = (
                f"POST /v1/runs/{run_id}/contributions HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: 20000\r\n"
                f"X-Tessera-Contribution: {meta.model_dump_json()}\r\n\r\n"
            )
            sock.sendall(head.encode() + b"\0" * 5000)  # then the connection drops mid-body
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(30)
            while sock.recv(4096):  # until the hub has given up on the upload and closed its side
                pass
        with HubClient.connect(cluster.url, admin_token) as admin:
            assert admin.rounds(run_id)[0].bytes_in == 0 and admin.contributions(run_id) == []
        blobs_after = sorted(p.name for p in (tmp_path / "hub" / "blobs").rglob("*") if p.is_file())
        assert blobs_after == blobs_before
        with HubClient.connect(cluster.url, token, run_id=run_id) as worker:  # the lease is still usable
            assert worker.lease(worker_id).lease == grant
    finally:
        cluster.stop()
