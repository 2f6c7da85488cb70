"""The pool at the hub over HTTP: placement by fair share, moving off paused runs after the
minimum stay, pledges served first, the queue and its reasons (both backends)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.api.messages import PledgeRequest, PoolJoinRequest
from tessera.core.tensors import to_bytes
from tessera.errors import ConfigError, Forbidden, NotFound
from tessera.hub.service import HubService
from tessera.hub.tables import LedgerEntry
from tests.helpers import FakeClock, meta, tiny_recipe, work, zero_update

pytestmark = pytest.mark.timeout(120)


def provider(admin: HubClient, http: TestClient, name: str) -> HubClient:
    return HubClient(http, admin.create_provider(name).token, retry_s=0.0)


def give_credit(service: HubService, provider_id: str, run_id: str, pflop: float, at: float) -> None:
    """A compute credit as a committed round writes one (the ledger is append-only)."""
    with service.state.transaction() as s:
        s.add(
            LedgerEntry(
                provider_id=provider_id,
                run_id=run_id,
                contribution_id=f"seed-{provider_id}",
                version_id="v",
                kind="compute",
                tokens=1,
                flops_per_token=1.0,
                amount=pflop,
                created_at=at,
            )
        )


def test_pool_workers_follow_fair_share_pauses_and_pledges(
    admin: HubClient, http: TestClient, service: HubService, clock: FakeClock, corpus_dir: Path
) -> None:
    alice, bob, carol = (provider(admin, http, n) for n in ("alice", "bob", "carol"))
    recipe = tiny_recipe(corpus_dir, quorum=4)
    run_a = alice.create_run(recipe.replace('name = "tiny"', 'name = "a"')).run_id
    run_b = bob.create_run(recipe.replace('name = "tiny"', 'name = "b"')).run_id
    give_credit(service, alice.whoami().provider_id, run_b, 3.0, clock.now)  # alice gave 3 PFLOP

    members = [carol.join_pool(PoolJoinRequest(name=f"c{i}")).member_id for i in range(4)]
    placed = [carol.assign(m).run_id for m in members]
    assert placed.count(run_a) == 3 and placed.count(run_b) == 1  # entitled 3.4 : 0.6 of 4

    queue = {e.run_id: e for e in bob.queue().runs}
    assert queue[run_a].ahead == 0 and queue[run_b].ahead == 1
    assert queue[run_a].balance_pflop == pytest.approx(3.0) and queue[run_a].workers == 3
    assert "balance is +0.0 PFLOP; 1 runs ahead" in queue[run_b].reason

    alice.pause(run_a)  # a paused run leases nothing: its workers move at once
    assert [carol.assign(m).run_id for m in members] == [run_b] * 4
    alice.pause(run_a, paused=False)
    assert carol.assign(members[0]).run_id == run_b  # within its minimum stay
    clock.advance(service.config.pool.min_stay_s + 1)
    assert [carol.assign(m).run_id for m in members] == [run_a, run_a, run_a, run_b]

    with pytest.raises(Forbidden):
        carol.pause(run_b)
    pledge = bob.pledge(PledgeRequest(target="run", target_id=run_b, nodes=1))
    own = bob.join_pool(PoolJoinRequest(name="b0")).member_id
    assert bob.pledges()[0].members == 1 and bob.pledges()[0].pledge_id == pledge.pledge_id
    first = bob.assign(own)
    assert (first.run_id, first.serving) == (run_b, pledge.pledge_id)  # its pledge's run first
    bob.cancel_pledge(pledge.pledge_id)
    assert bob.pledges()[0].status == "cancelled"
    with pytest.raises(NotFound):
        carol.cancel_pledge(pledge.pledge_id)


def test_pool_requests_are_checked(admin: HubClient, http: TestClient, corpus_dir: Path) -> None:
    alice = provider(admin, http, "alice")
    with pytest.raises(ConfigError, match="hours are 00:00 to 24:00"):
        alice.join_pool(PoolJoinRequest(windows=["25:00-07:00 UTC"]))
    with pytest.raises(ConfigError, match="nodes or a budget, not both"):
        alice.pledge(PledgeRequest(nodes=2, steps=100))
    with pytest.raises(ConfigError, match="names no target"):
        alice.pledge(PledgeRequest(target="pool", target_id="x", nodes=1))
    with pytest.raises(NotFound):
        alice.pledge(PledgeRequest(target="collective", target_id="nobody", steps=5))
    other = provider(admin, http, "bob").join_pool(PoolJoinRequest()).member_id
    with pytest.raises(NotFound):
        alice.assign(other)  # another provider's pool worker
    assert alice.pledges() == [] and alice.pool_members() == []  # nothing kept of the refused


def test_a_worker_outside_its_windows_waits_until_they_open(
    admin: HubClient, http: TestClient, clock: FakeClock, corpus_dir: Path
) -> None:
    alice = provider(admin, http, "alice")
    run_id = alice.create_run(tiny_recipe(corpus_dir)).run_id
    clock.now = 1_767_268_800.0  # 2026-01-01 12:00 UTC
    member = alice.join_pool(PoolJoinRequest(windows=["22:00-07:00 UTC"])).member_id
    idle = alice.assign(member)
    assert idle.status == "idle" and idle.retry_after_s == pytest.approx(10 * 3600)
    clock.advance(10 * 3600)
    assert alice.assign(member).run_id == run_id


def test_leases_fit_in_the_pool_workers_window(
    admin: HubClient, http: TestClient, service: HubService, clock: FakeClock, corpus_dir: Path
) -> None:
    """A pool worker's lease stops before its window ends (the margin left to upload), has no more
    inner steps than its measured step time fits (with 10% to spare), and none is given once it
    cannot fit one."""
    alice = provider(admin, http, "alice")
    run_id = alice.create_run(tiny_recipe(corpus_dir, quorum=1, inner_steps=50, rounds=5)).run_id
    night_ends = 1_767_250_800.0  # 2026-01-01 07:00 UTC
    clock.now = night_ends - 3600
    member = alice.join_pool(PoolJoinRequest(windows=["22:00-07:00 UTC"])).member_id
    assert alice.assign(member).run_id == run_id
    alice.select_run(run_id)
    worker = alice.register("night", member_id=member).worker_id
    margin = service.config.pool.window_margin_s
    first = work(alice, worker)
    assert first.stop_at == night_ends - margin and first.inner_steps == 50  # step time not known yet
    claims = meta(first, worker, tokens=64).model_copy(update={"steps": 2, "compute_s": 600.0})
    assert alice.submit(claims, to_bytes(zero_update(alice, first))).status == "accepted"  # 300 s a step
    clock.advance(60)
    second = work(alice, worker)
    assert second.round == 1 and second.inner_steps == int(0.9 * (night_ends - margin - clock.now) / 300)
    clock.now = night_ends - margin - 100  # not one 300 s step left before the margin
    closed = alice.lease(worker)
    assert closed.status == "wait" and closed.retry_after_s == pytest.approx(15 * 3600 + margin + 100)
