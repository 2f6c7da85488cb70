"""Claims checked by replay: honest work holds, a worker claiming 10x its tokens and one sending
a random update of the right norm are caught within their first contributions, their credit is
taken back by compensating entries, and honest workers are unaffected (both backends)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.api.messages import ContributionReply
from tessera.core.tensors import from_bytes, to_bytes
from tessera.errors import ClaimOutOfBounds, Forbidden
from tessera.hub.service import HubService
from tessera.hub.tables import LedgerEntry
from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSettings
from tests.helpers import join, meta, reading, tiny_recipe, work

pytestmark = pytest.mark.timeout(120)


def honest(loop: WorkLoop) -> ContributionReply:
    """One lease trained and uploaded, as the work loop does it."""
    session = loop.session
    grant = session.client.lease(session.identity.worker_id).lease
    assert grant is not None
    session.load(session.tensors_of(grant), grant)
    base = session.trained()
    return session.client.submit(*session.contribution(grant, base, session.train(grant)))


def test_replays_catch_cheaters_and_the_ledger_takes_their_credit_back(
    admin: HubClient, http: TestClient, service: HubService, tmp_path: Path, corpus_dir: Path
) -> None:
    run_id = admin.create_run(tiny_recipe(corpus_dir, rounds=3, quorum=2, inner_steps=3)).run_id
    loops = []
    for name in ("h1", "h2"):
        client = HubClient(http, admin.create_provider(name).token, retry_s=0, run_id=run_id)
        settings = WorkerSettings(tmp_path / name, name=name, wait_s=0, trust=reading(corpus_dir))
        loops.append(WorkLoop(client, settings))
    liar, liar_id = join(http, admin, run_id, "liar")  # claims 10x its tokens
    faker, faker_id = join(http, admin, run_id, "faker")  # a random update of the right norm

    grant = work(liar, liar_id)
    body = to_bytes({k: torch.zeros_like(v) for k, v in from_bytes(liar.blob(grant.blob_sha256)).items()})
    with pytest.raises(ClaimOutOfBounds):
        liar.submit(meta(grant, liar_id, tokens=10 * 3 * 4 * 16), body)
    with pytest.raises(Forbidden, match="was caught"):
        liar.lease(liar_id)

    grant = work(faker, faker_id)
    base = from_bytes(faker.blob(grant.blob_sha256))
    assert honest(loops[0]).status == "accepted"
    size = admin.contributions(run_id)[0].norm
    noise = {k: torch.randn_like(v) for k, v in base.items() if v.is_floating_point()}
    scale = size / float(torch.cat([t.flatten() for t in noise.values()]).norm())
    faked = faker.submit(meta(grant, faker_id), to_bytes({k: v * scale for k, v in noise.items()}))
    assert faked.status == "accepted"  # the round closes with it: credited, for now
    assert honest(loops[1]).round == 1  # counted in the next round
    assert service.verify_pending(limit=10) == 3  # every new worker's first contributions
    verdicts = {c.worker_id: c.verified for c in admin.contributions(run_id)}
    assert verdicts[faker_id] == "failed" and list(verdicts.values()).count("passed") == 2
    with pytest.raises(Forbidden, match="does not match the hub's replay"):
        faker.lease(faker_id)

    assert honest(loops[0]).status == "accepted"  # the honest go on: round 1 closes
    with service.state.reading() as s:
        entries = s.scalars(select(LedgerEntry)).all()
    (correction,) = [e for e in entries if e.kind == "correction"]
    (refund,) = [e for e in entries if e.kind == "refund"]
    faker_provider = correction.provider_id
    assert refund.provider_id == admin.whoami().provider_id and refund.amount == -correction.amount
    assert sum(e.amount for e in entries if e.provider_id == faker_provider) == pytest.approx(0.0)
    ledger = {b.name: b for b in admin.ledger().providers}
    assert ledger[f"{run_id[:8]}-faker"].pflop == pytest.approx(0.0)
    assert ledger[f"{run_id[:8]}-liar"].pflop == 0.0
    honest_credit = sum(e.amount for e in entries if e.kind == "compute" and e.provider_id != faker_provider)
    assert ledger["admin"].used_pflop == pytest.approx(honest_credit)  # the owner paid for honest work only
