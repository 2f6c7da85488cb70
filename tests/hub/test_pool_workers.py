"""Pool workers in this process (threads, over HTTP to an in-process hub): they move from run
to run as runs finish, refuse runs their owner does not trust, stop a lease when their window
ends and upload what they did; the ledger stays exact (both backends)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.api.messages import ContributionReply, PoolJoinRequest
from tessera.hub.service import HubService
from tessera.hub.tables import LedgerEntry
from tessera.trust import Trust
from tessera.worker.loop import WorkLoop
from tessera.worker.pool import PoolLoop
from tessera.worker.session import WorkerSettings
from tests.helpers import reading, tiny_recipe, write_factory_module

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def trust(corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Trust:
    """The hub trusts one factory more than the pool workers do."""
    monkeypatch.setenv("TESSERA_TEST_MARKS", str(write_factory_module(tmp_path, "pool_factory")))
    monkeypatch.syspath_prepend(str(tmp_path))
    return Trust.of(["pool_factory:build"], [corpus_dir])


def test_pool_workers_move_to_the_runs_left_and_the_ledger_stays_exact(
    admin: HubClient, http: TestClient, service: HubService, tmp_path: Path, corpus_dir: Path
) -> None:
    owners = {
        name: HubClient(http, admin.create_provider(name).token, retry_s=0) for name in ("alice", "bob")
    }
    recipe = tiny_recipe(corpus_dir, rounds=2, quorum=1)
    runs = [
        owners[o].create_run(recipe.replace('"tiny"', f'"{o}{i}"')).run_id
        for o, i in (("alice", 0), ("alice", 1), ("bob", 0))
    ]
    other = recipe.replace('name = "tiny"', 'name = "other"\npriority = 5.0')  # every worker's first offer
    other = other.replace("context = 16, d_model = 16, n_layers = 1, n_heads = 2", "context = 16")
    untrusted = (
        owners["bob"].create_run(other.replace("[model]", '[model]\nfactory = "pool_factory:build"')).run_id
    )
    carol = admin.create_provider("carol").token
    done, stop = threading.Event(), threading.Event()

    def finished(_: ContributionReply) -> None:
        if all(admin.status(r).status == "finished" for r in runs):
            done.set()
            stop.set()

    loops = [
        PoolLoop(
            HubClient(http, carol, retry_s=0),
            WorkerSettings(tmp_path / f"w{i}", name=f"w{i}", wait_s=1, trust=reading(corpus_dir)),
            PoolJoinRequest(name=f"w{i}"),
        )
        for i in range(2)
    ]
    threads = [threading.Thread(target=loop.run, args=(stop, finished)) for loop in loops]
    for t in threads:
        t.start()
    assert done.wait(150), [admin.status(r).status for r in runs]
    for t in threads:
        t.join(30)
    worked = [[run for run, _ in loop.summary.stays] for loop in loops]
    assert sorted(r for stays in worked for r in stays) == sorted(runs)  # each run served once
    assert any(len(stays) == 2 for stays in worked)  # a worker moved when its run finished
    refused = [loop.summary.refused for loop in loops]  # a worker offered it refused it, before it ran
    assert [untrusted] in refused and all(r in ([], [untrusted]) for r in refused)
    with service.state.reading() as s:
        kinds = dict(
            s.execute(select(LedgerEntry.kind, func.sum(LedgerEntry.amount)).group_by(LedgerEntry.kind)).all()
        )
    assert kinds["compute"] == pytest.approx(-kinds["usage"]) and kinds["compute"] > 0
    ledger = {b.name: b for b in admin.ledger().providers}
    assert ledger["carol"].pflop == pytest.approx(ledger["alice"].used_pflop + ledger["bob"].used_pflop)
    assert ledger["alice"].used_pflop == pytest.approx(2 * ledger["bob"].used_pflop)  # 2 runs to 1


def test_a_lease_stops_when_its_window_ends_and_its_work_counts(
    admin: HubClient, http: TestClient, tmp_path: Path, corpus_dir: Path
) -> None:
    """The worker stops at the lease's stop time, uploads the steps it did, and the hub accepts
    them (weighted by their tokens)."""
    run_id = admin.create_run(tiny_recipe(corpus_dir, rounds=2, quorum=1, inner_steps=100_000)).run_id
    client = HubClient(http, admin.token, retry_s=0, run_id=run_id)
    loop = WorkLoop(client, WorkerSettings(tmp_path / "w", wait_s=1, trust=reading(corpus_dir)))
    session = loop.session
    grant = client.lease(session.identity.worker_id).lease
    assert grant is not None
    ends = grant.model_copy(update={"stop_at": time.time() + 0.5})  # as a window ending soon sets it
    session.load(session.tensors_of(ends), ends)
    base = session.trained()
    result = session.train(ends)
    assert 0 < result.steps < ends.inner_steps
    reply = client.submit(*session.contribution(ends, base, result))
    assert reply.status == "accepted"
    counted = admin.contributions(run_id)[0]
    assert counted.tokens == result.tokens and counted.weight == float(result.tokens)
