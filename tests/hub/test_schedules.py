"""A run's schedules through the hub: leases take each round's H from the sync schedule, workers
train at the learning rates of the run's schedule, and the hub's replay of a lease trains at the
same ones (its replay of a first-round lease, from a fresh optimizer on both sides, is the
worker's upload itself)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.core.tensors import from_bytes
from tessera.demo import with_settings
from tessera.hub.service import HubService
from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSettings
from tests.helpers import reading, tiny_recipe

pytestmark = pytest.mark.timeout(120)

SCHEDULE = {"inner_steps_by_round": [2, 5], "lr_schedule": "cosine", "warmup_steps": 3}


def loops_for(http: TestClient, admin: HubClient, run_id: str, tmp_path: Path, data: Path) -> list[WorkLoop]:
    loops = []
    for name in ("a", "b"):
        client = HubClient(http, admin.create_provider(name).token, retry_s=0, run_id=run_id)
        loops.append(
            WorkLoop(client, WorkerSettings(tmp_path / name, name=name, wait_s=0, trust=reading(data)))
        )
    return loops


def test_leases_follow_the_sync_schedule_and_replays_the_lr_schedule(
    admin: HubClient, http: TestClient, service: HubService, tmp_path: Path, corpus_dir: Path
) -> None:
    text = with_settings(tiny_recipe(corpus_dir, rounds=3, quorum=2, inner_steps=3), {"train": SCHEDULE})
    run_id = admin.create_run(text).run_id
    loops = loops_for(http, admin, run_id, tmp_path, corpus_dir)
    steps_by_round: dict[int, set[int]] = {}
    first = None
    for _ in range(3):
        for loop in loops:
            session = loop.session
            grant = session.client.lease(session.identity.worker_id).lease
            assert grant is not None
            session.load(session.tensors_of(grant), grant)
            base = session.trained()
            result = session.train(grant)
            steps_by_round.setdefault(grant.round, set()).add(result.steps)
            meta, body = session.contribution(grant, base, result)
            assert session.client.submit(meta, body).status == "accepted"
            first = first or (grant, base, from_bytes(body), session.identity.worker_id)
    assert steps_by_round == {0: {2}, 1: {5}, 2: {3}}
    assert admin.status(run_id).current_round == 3

    assert first is not None
    grant, base, upload, worker_id = first
    # the hub's own check of that contribution: its replay (placed by the verifier from the lease)
    # gains exactly what the upload gained, as both start from version 0 with a fresh optimizer
    (mine,) = [c for c in admin.contributions(run_id) if c.round == 0 and c.worker_id == worker_id]
    assert service.verifier._gain(mine.contribution_id) == pytest.approx(1.0, abs=1e-4)
    work, place = (grant.inner_steps, grant.seed), (grant.round, grant.inner_steps)
    replayed, _ = service.verifier.replay(run_id, base, grant.shard, work, place)
    for name, delta in upload.items():
        torch.testing.assert_close(base[name] - delta, replayed[name], rtol=0, atol=1e-6)
    at_round_2, _ = service.verifier.replay(run_id, base, grant.shard, work, (2, 3))  # other lrs
    assert any(not torch.allclose(at_round_2[k], replayed[k], atol=1e-6) for k in upload)
