"""One of four workers is hostile; validation and robust aggregation keep the run on course."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.blobs import FileBlobStore
from tessera.hub.config import HubConfig
from tessera.hub.service import HubService
from tessera.hub.state import State
from tessera.testing.adversary import ROBUST_SECTIONS, Attack, lockstep_run
from tests.helpers import FakeClock, postgres_url, reading, tiny_recipe

pytestmark = pytest.mark.timeout(300)


def run_with(
    tmp: Path, corpus: Path, attacks: list[Attack | None], backend: str
) -> tuple[float, list[list[str]]]:
    """Final held-out loss, and per worker what the hub finally made of each upload."""
    tmp.mkdir(parents=True)
    clock = FakeClock()
    url = f"sqlite:///{tmp / 'hub.sqlite'}" if backend == "sqlite" else postgres_url()
    service = HubService(State(url), FileBlobStore(tmp / "blobs"), clock, HubConfig(trust=reading(corpus)))
    recipe = tiny_recipe(corpus, rounds=4, quorum=len(attacks), inner_steps=25, extra=ROBUST_SECTIONS)
    admin = service.providers.principal(service.providers.bootstrap_admin())
    created = service.create_run(admin, recipe.replace("num_shards = 2", "num_shards = 4"))
    workers = lockstep_run(service, admin, created.run_id, attacks, tmp / "workers", clock.advance)
    loss = service.status(created.run_id, admin).latest_version.val_loss
    records = service.contributions(created.run_id, admin)
    service.state.close()
    assert loss is not None
    final = [
        [c.status for c in records if c.worker_id == w.loop.session.identity.worker_id]
        + ["refused"] * w.outcome.statuses.count("refused")
        for w in workers
    ]
    return loss, final


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("attack", ["sign_flip", "noise", "nan"])
def test_one_hostile_worker_of_four(tmp_path: Path, corpus_dir: Path, attack: Attack, backend: str) -> None:
    clean, honest = run_with(tmp_path / "clean", corpus_dir, [None, None, None], backend)
    attacked, outcomes = run_with(tmp_path / attack, corpus_dir, [None, None, None, attack], backend)
    assert all(s == "accepted" for statuses in honest + outcomes[:3] for s in statuses), outcomes
    assert abs(attacked - clean) <= 0.05 * clean, (clean, attacked)
    assert len(outcomes[3]) == 4 and all(s in ("rejected", "refused") for s in outcomes[3]), outcomes[3]
