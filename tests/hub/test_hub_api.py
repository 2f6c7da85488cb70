"""The hub's HTTP API, in process: happy path, staleness, and bad input that changes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.api.messages import ContributionMeta
from tessera.api.protocol import META_HEADER
from tessera.core.tensors import from_bytes, to_bytes
from tessera.errors import LeaseError, NotFound, TesseraError, Unauthorized
from tessera.hub.service import HubService
from tessera.hub.tables import Contribution, Lease, RoundRecord, Version
from tests.helpers import FakeClock, join, meta, tiny_recipe, work, zero_update

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def run(admin: HubClient, corpus_dir: Path) -> str:
    created = admin.create_run(tiny_recipe(corpus_dir))
    return created.run_id


def test_full_round_closes_on_quorum_with_metrics(http: TestClient, admin: HubClient, run: str) -> None:
    run_id = run
    (a, wa), (b, wb) = join(http, admin, run_id, "a"), join(http, admin, run_id, "b")
    ga, gb = work(a, wa), work(b, wb)
    assert ga.version_number == 0 and ga.inner_steps == 3 and ga.shard != gb.shard
    ra = a.submit(meta(ga, wa, tokens=100), to_bytes(zero_update(a, ga)))
    assert ra.status == "accepted" and ra.weight == 100
    assert a.lease(wa).status == "wait"  # one contribution per worker per round
    b.submit(meta(gb, wb, tokens=150), to_bytes(zero_update(b, gb)))
    status = admin.status(run_id)
    assert status.rounds_done == 1 and status.latest_version.number == 1
    assert set(status.latest_version.contributions) == {ga.lease_id, gb.lease_id}
    first = admin.rounds(run_id)[0]
    assert first.status == "closed" and first.accepted == 2 and first.tokens == 250
    assert first.close_reason == "quorum" and first.val_loss is not None
    assert first.bytes_in > 0 and first.bytes_out == 2 * admin.version(run_id, 0).nbytes
    # Nesterov first step with a uniform 0.01 pseudo-gradient: theta - 0.7 * (0.01 + 0.9 * 0.01)
    v0 = from_bytes(a.blob(admin.version(run_id, 0).blob_sha256))
    v1 = from_bytes(a.blob(status.latest_version.blob_sha256))
    name = next(iter(v0))
    assert torch.allclose(v1[name], v0[name] - 0.7 * 0.019, atol=1e-6)
    assert hashlib.sha256(to_bytes(v1)).hexdigest() == status.latest_version.blob_sha256


def test_run_finishes_and_leases_say_done(http: TestClient, admin: HubClient, corpus_dir: Path) -> None:
    created = admin.create_run(tiny_recipe(corpus_dir, rounds=1, quorum=1))
    client, wid = join(http, admin, created.run_id, "solo")
    grant = work(client, wid)
    client.submit(meta(grant, wid), to_bytes(zero_update(client, grant)))
    assert admin.status(created.run_id).status == "finished"
    assert client.lease(wid).status == "done"


def test_stale_contribution_is_accepted_downweighted(http: TestClient, run: str, admin: HubClient) -> None:
    run_id = run
    (a, wa), (b, wb), (c, wc) = (join(http, admin, run_id, n) for n in "abc")
    late = work(c, wc)  # leased on version 0, uploaded after round 0 closed
    for client, wid in ((a, wa), (b, wb)):
        g = work(client, wid)
        client.submit(meta(g, wid), to_bytes(zero_update(client, g)))
    reply = c.submit(meta(late, wc, tokens=64), to_bytes(zero_update(c, late)))
    assert reply.status == "accepted" and reply.round == 1 and reply.weight == 32  # 64 * 0.5 ** 1
    first = admin.rounds(run_id)[1]
    assert first.accepted == 1 and first.tokens == 64


def test_staleness_beyond_bound_is_rejected_with_reason(
    http: TestClient, admin: HubClient, corpus_dir: Path
) -> None:
    created = admin.create_run(tiny_recipe(corpus_dir, rounds=4, quorum=1))
    (a, wa), (c, wc) = join(http, admin, created.run_id, "a"), join(http, admin, created.run_id, "c")
    late = work(c, wc)
    for _ in range(2):
        g = work(a, wa)
        a.submit(meta(g, wa), to_bytes(zero_update(a, g)))
    reply = c.submit(meta(late, wc), to_bytes(zero_update(c, late)))
    assert (
        reply.status == "rejected"
        and "stale" in (reply.reason or "")
        and "lease again" in (reply.reason or "")
    )
    assert admin.rounds(created.run_id)[2].rejected == 1


def test_retried_upload_is_recorded_once(http: TestClient, admin: HubClient, run: str) -> None:
    run_id = run
    a, wa = join(http, admin, run_id, "a")
    g = work(a, wa)
    body = to_bytes(zero_update(a, g))
    first = a.submit(meta(g, wa), body)
    again = a.submit(meta(g, wa), body)
    assert not first.duplicate and again.duplicate and again.status == "accepted"
    assert admin.rounds(run_id)[0].accepted == 1


def test_restarted_worker_gets_its_open_lease_back(http: TestClient, admin: HubClient, run: str) -> None:
    run_id = run
    a, wa = join(http, admin, run_id, "a")
    assert work(a, wa).lease_id == work(a, wa).lease_id


# --- bad input: a 4xx JSON error and no change of state --------------------------------


def snapshot(service: HubService, blobs: Path) -> dict[str, Any]:
    with service.state.transaction() as s:
        rounds = [
            (r.number, r.accepted, r.rejected, r.bytes_in, r.tokens) for r in s.scalars(select(RoundRecord))
        ]
        return {
            "contributions": s.scalar(select(func.count()).select_from(Contribution)),
            "versions": s.scalar(select(func.count()).select_from(Version)),
            "leases": sorted((le.id, le.state) for le in s.scalars(select(Lease))),
            "rounds": rounds,
            "blobs": sorted(p.name for p in blobs.rglob("*") if p.is_file()),
        }


def post_contribution(http: TestClient, run_id: str, token: str, header: str | None, body: bytes) -> Any:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    if header is not None:
        headers[META_HEADER] = header
    return http.post(f"/v1/runs/{run_id}/contributions", content=body, headers=headers)


def bad_cases(
    good: dict[str, torch.Tensor], m: ContributionMeta
) -> dict[str, tuple[str | None, bytes, int, str]]:
    name = next(iter(good))
    renamed = {("x" + k if k == name else k): v for k, v in good.items()}
    reshaped = {**good, name: torch.zeros(3, 3)}
    halves = {**good, name: good[name].half()}
    nan = {**good, name: torch.full_like(good[name], float("nan"))}
    inf = {**good, name: torch.full_like(good[name], float("inf"))}
    header = m.model_dump_json()
    unknown = m.model_copy(update={"lease_id": "0" * 32, "contribution_id": "c-unknown"}).model_dump_json()
    return {
        "not safetensors": (header, b"\x80\x04\x95 pickle bytes", 422, "safetensors"),
        "wrong names": (header, to_bytes(renamed), 422, "names"),
        "wrong shape": (header, to_bytes(reshaped), 422, "shape"),
        "wrong dtype": (header, to_bytes(halves), 422, "dtype"),
        "nan": (header, to_bytes(nan), 422, "NaN or Inf"),
        "inf": (header, to_bytes(inf), 422, "NaN or Inf"),
        "unknown lease": (unknown, to_bytes(good), 409, "unknown"),
        "missing metadata": (None, to_bytes(good), 422, META_HEADER),
        "bad metadata": (json.dumps({"tokens": -1}), to_bytes(good), 422, "invalid"),
        "oversized": (header, to_bytes(good) + b"\0" * 10_000_000, 413, "limit"),
    }


def test_bad_uploads_are_refused_and_change_nothing(
    http: TestClient, admin: HubClient, service: HubService, tmp_path: Path, run: str
) -> None:
    run_id = run
    a, wa = join(http, admin, run_id, "a")
    g = work(a, wa)
    good, m = zero_update(a, g), meta(g, wa)
    before = snapshot(service, tmp_path / "blobs")
    for case, (header, body, status, words) in bad_cases(good, m).items():
        response = post_contribution(http, run_id, a.token or "", header, body)
        assert response.status_code == status, case
        assert words in response.json()["detail"], (case, response.json())
        assert snapshot(service, tmp_path / "blobs") == before, case
    assert a.submit(m, to_bytes(good)).status == "accepted"  # the lease is still usable


def test_expired_lease_wrong_run_and_wrong_token(
    http: TestClient,
    admin: HubClient,
    service: HubService,
    clock: FakeClock,
    corpus_dir: Path,
    tmp_path: Path,
    run: str,
) -> None:
    run_id = run
    other = admin.create_run(tiny_recipe(corpus_dir))
    a, wa = join(http, admin, run_id, "a")
    g = work(a, wa)
    body = to_bytes(zero_update(a, g))
    b, _ = join(http, admin, run_id, "b")
    before = snapshot(service, tmp_path / "blobs")
    header = meta(g, wa).model_dump_json()
    response = post_contribution(http, other.run_id, a.token or "", header, body)  # wrong run
    assert response.status_code == 404 and "not registered" in response.json()["detail"]
    response = post_contribution(http, run_id, b.token or "", header, body)  # another provider's worker
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    response = post_contribution(http, run_id, "tsr_not-a-token", header, body)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    with pytest.raises(Unauthorized):
        HubClient(http, "tsr_wrong", retry_s=0, run_id=run_id).lease(wa)
    clock.advance(10_000)
    with pytest.raises(LeaseError, match="expired"):
        a.submit(meta(g, wa), body)
    assert snapshot(service, tmp_path / "blobs") == before


def test_unknown_things_are_404(http: TestClient, admin: HubClient, run: str) -> None:
    run_id = run
    with pytest.raises(NotFound):
        admin.status("0" * 32)
    with pytest.raises(TesseraError, match="should match pattern"):
        admin.status("no-such-run")  # malformed ids are refused before any lookup
    with pytest.raises(NotFound):
        admin.version(run_id, 99)
    client = HubClient(http, admin.token, retry_s=0, run_id=run_id)
    with pytest.raises(NotFound):
        client.blob("0" * 64)
    with pytest.raises(NotFound):
        client.lease("unregistered")
    auth = {"Authorization": f"Bearer {admin.token}"}
    bad_recipe = http.post("/v1/runs", content=b"[run]\nrounds = 0\n[model]\n", headers=auth)
    assert bad_recipe.status_code == 400 and "run.rounds" in bad_recipe.json()["detail"]


def test_deadline_closes_a_round_without_quorum(
    http: TestClient, admin: HubClient, service: HubService, clock: FakeClock, corpus_dir: Path
) -> None:
    created = admin.create_run(tiny_recipe(corpus_dir, quorum=3, extra_run="round_deadline_s = 60"))
    a, wa = join(http, admin, created.run_id, "a")
    g = work(a, wa)
    a.submit(meta(g, wa), to_bytes(zero_update(a, g)))
    assert service.close_due_rounds() == 0
    clock.advance(61)
    assert service.close_due_rounds() == 1
    assert admin.rounds(created.run_id)[0].close_reason == "deadline"


def test_contribution_id_of_another_worker_is_refused(http: TestClient, admin: HubClient, run: str) -> None:
    run_id = run
    (a, wa), (b, wb) = join(http, admin, run_id, "a"), join(http, admin, run_id, "b")
    ga, gb = work(a, wa), work(b, wb)
    a.submit(meta(ga, wa), to_bytes(zero_update(a, ga)))
    with pytest.raises(LeaseError, match="taken"):
        b.submit(meta(gb, wb, cid=ga.lease_id), to_bytes(zero_update(b, gb)))


def test_an_expired_lease_is_reissued(http: TestClient, admin: HubClient, clock: FakeClock, run: str) -> None:
    a, wa = join(http, admin, run, "a")
    first = work(a, wa)
    clock.advance(first.deadline - clock.now + 1)
    second = work(a, wa)
    assert second.lease_id != first.lease_id and second.round == first.round and second.deadline > clock.now


def test_numbers_beyond_any_column_and_deep_recipes_are_refused_not_failed(
    http: TestClient, admin: HubClient, run: str
) -> None:
    auth = {"Authorization": f"Bearer {admin.token}"}
    for path in (f"/v1/runs/{run}/versions/{2**63}", f"/v1/runs/{run}/versions/{2**64 + 1}"):
        assert http.get(path, headers=auth).status_code == 422
    assert http.get(f"/v1/runs/{run}/contributions", params={"round": 2**63}, headers=auth).status_code == 422
    deep = http.post("/v1/runs", content=("a = " + "[" * 900 + "]" * 900).encode(), headers=auth)
    assert deep.status_code == 400 and "nests" in deep.json()["detail"]
    label = http.post(
        f"/v1/providers/{admin.whoami().provider_id}/tokens", json={"label": "a\u202eb"}, headers=auth
    )
    assert label.status_code == 422 and "pattern" in label.json()["detail"]


def test_reading_runs_builds_no_model_and_finished_runs_leave_memory(
    http: TestClient, admin: HubClient, service: HubService, corpus_dir: Path
) -> None:
    done = admin.create_run(tiny_recipe(corpus_dir, rounds=1, quorum=1)).run_id
    client, wid = join(http, admin, done, "solo")
    grant = work(client, wid)
    assert done in service.cached_runs()
    client.submit(meta(grant, wid), to_bytes(zero_update(client, grant)))
    assert admin.status(done).status == "finished" and done not in service.cached_runs()
    assert client.lease(wid).status == "done" and done not in service.cached_runs()  # said, not built
    restarted = HubService(service.state, service.store, config=service.config)  # a hub after a restart
    who = restarted.providers.principal(admin.token)
    listed = [restarted.status(run_id, who) for run_id in restarted.run_ids(who)]
    assert [s.run_id for s in listed] == [done] and restarted.cached_runs() == []
