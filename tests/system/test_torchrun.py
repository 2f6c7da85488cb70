"""A torchrun group (2 processes, DDP over gloo on CPU) works as one worker of a real hub."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.api.client import HubClient
from tessera.recipe import with_plan
from tessera.testing.cluster import ROOT, free_port, start_hub
from tests.helpers import tiny_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
CHECKSUM = re.compile(r"rank (\d): lease (\w+) trained, weight checksum (\S+)")


@pytest.fixture
def hub(tmp_path: Path, corpus_dir: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    proc = start_hub(
        tmp_path / "hub",
        port,
        "--data-root",
        str(corpus_dir),
        database_url=f"sqlite:///{tmp_path / 'hub.sqlite'}",
    )
    try:
        yield f"http://127.0.0.1:{port}", (tmp_path / "hub" / "admin.token").read_text().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_torchrun_group_is_one_worker(hub: tuple[str, str], corpus_dir: Path, tmp_path: Path) -> None:
    url, token = hub
    recipe = with_plan(tiny_recipe(corpus_dir, rounds=2, quorum=1, inner_steps=3), "pair", {"ddp-pair": 5})
    with HubClient.connect(url, token) as client:
        run_id = client.create_run(recipe).run_id
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "tessera", "worker", "--hub", url, "--token", token, "--run-id", run_id,
        "--name", "ddp-pair", "--state-dir", str(tmp_path / "worker"), "--threads", "1",
        "--data-root", str(corpus_dir),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    with HubClient.connect(url, token) as client:
        contributions = client.contributions(run_id)
        rounds = client.rounds(run_id)
        initial = client.version(run_id, 0).val_loss
    assert [c.status for c in contributions] == ["accepted", "accepted"]
    # the plan's 5 steps on each of 2 ranks, batch 4 x context 16: every rank's tokens count
    assert all(c.tokens == 2 * 5 * 4 * 16 for c in contributions)
    assert rounds[-1].val_loss is not None and rounds[-1].val_loss < initial
    # DDP kept both ranks' weights equal after every lease
    sums: dict[str, dict[str, str]] = {}
    for rank, lease, checksum in CHECKSUM.findall(" ".join((done.stdout + done.stderr).split())):
        sums.setdefault(lease, {})[rank] = checksum
    assert len(sums) == 2 and all(set(by_rank) == {"0", "1"} for by_rank in sums.values())
    assert all(by_rank["0"] == by_rank["1"] for by_rank in sums.values())
