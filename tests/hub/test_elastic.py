"""Elastic membership: a fractional quorum follows the run's active workers (those leased in the
round or the round before, once their first work has arrived) as they come and go, and an
adaptive deadline (``run.deadline_k``) closes a round at median + k x MAD of the last rounds'
arrival times, which one straggler does not stretch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.api.messages import ContributionReply, LeaseGrant
from tessera.core.tensors import to_bytes
from tessera.hub import queries
from tessera.hub.rounds import MIN_DEADLINE_S, adaptive_deadline_s, quorum_of
from tessera.hub.service import HubService
from tests.helpers import FakeClock, join, meta, tiny_recipe, work, zero_update

pytestmark = pytest.mark.timeout(120)

Crew = dict[str, tuple[HubClient, str]]  # worker name -> (its provider's client, its worker id)


def lease(crew: Crew, names: str) -> dict[str, LeaseGrant]:
    return {name: work(*crew[name]) for name in names}


def submit(crew: Crew, name: str, grant: LeaseGrant) -> ContributionReply:
    """An upload through the HTTP route, which closes the round if it is due after replying."""
    client, worker_id = crew[name]
    return client.submit(meta(grant, worker_id), to_bytes(zero_update(client, grant)))


def closed(admin: HubClient, run_id: str) -> list[tuple[int, str | None]]:
    """(accepted, close reason) of each closed round."""
    return [(r.accepted, r.close_reason) for r in admin.rounds(run_id) if r.status == "closed"]


def quorum_now(service: HubService, run_id: str) -> int:
    with service.state.reading() as s:
        run = queries.run(s, run_id)
        return quorum_of(
            s, run_id, run.current_round, service.hub.runtimes.recipe_of(run).run, service.clock()
        )


def arrivals(service: HubService, run_id: str, since: int, before: int) -> list[float]:
    with service.state.reading() as s:
        full_steps = service.hub.runtimes.recipe_of(queries.run(s, run_id)).train.inner_steps
        return sorted(queries.arrival_times(s, run_id, since, before, full_steps))


def test_a_fractional_quorum_follows_the_active_workers_as_they_grow_and_shrink(
    http: TestClient, admin: HubClient, service: HubService, corpus_dir: Path
) -> None:
    """quorum = 0.5: 4 active workers close a round on 2 contributions, 8 on 4; after round 0 a
    worker counts once its first work has arrived (joining, it is a whole lease away); workers
    that stop leasing still count for the round after their last lease, then no more."""
    recipe = tiny_recipe(corpus_dir, rounds=5, extra_run="round_deadline_s = 100000")
    recipe = recipe.replace("quorum = 2", "quorum = 0.5")
    run_id = admin.create_run(recipe).run_id
    crew = {name: join(http, admin, run_id, name) for name in "abcdefgh"}
    first = lease(crew, "abcd")  # registered is not active: leased is
    assert quorum_now(service, run_id) == 2
    assert submit(crew, "a", first["a"]).round == 0 and closed(admin, run_id) == []
    submit(crew, "b", first["b"])
    assert closed(admin, run_id) == [(2, "quorum")]
    # round 1: e-h join; neither they nor c and d (still on round 0's lease) have delivered yet
    joined = lease(crew, "efgh")
    lease(crew, "ab")  # a and b, which delivered, train on
    assert quorum_now(service, run_id) == 1
    assert submit(crew, "c", first["c"]).round == 1  # stale by one: counts, and c with it
    assert quorum_now(service, run_id) == 2 and len(closed(admin, run_id)) == 1
    submit(crew, "d", first["d"])
    assert closed(admin, run_id) == [(2, "quorum"), (2, "quorum")]
    assert arrivals(service, run_id, 1, 2) == []  # the stale work tells nothing of round 1's pace
    # round 2: c and d lease again; e-h's round-1 work arrives, and the 8 are active
    grants = lease(crew, "cd")
    for name, quorum in zip("efg", (3, 3, 4), strict=True):
        submit(crew, name, joined[name])
        assert quorum_now(service, run_id) == quorum and len(closed(admin, run_id)) == 2
    submit(crew, "h", joined["h"])
    assert closed(admin, run_id)[-1] == (4, "quorum")
    # round 3: e-h have gone (no lease in rounds 2 or 3, none open): a-d are the 4 active
    assert quorum_now(service, run_id) == 2
    submit(crew, "c", grants["c"])
    assert len(closed(admin, run_id)) == 3
    submit(crew, "d", grants["d"])
    assert [accepted for accepted, _ in closed(admin, run_id)] == [2, 2, 4, 2]


def play_round(crew: Crew, clock: FakeClock, at: dict[str, float]) -> list[int]:
    """Every worker of ``at`` leases as the round opens (now) and uploads ``at[name]`` s later;
    the rounds the uploads counted in."""
    start = clock.now
    grants = lease(crew, "".join(at))
    rounds = []
    for name, after_s in sorted(at.items(), key=lambda item: item[1]):
        clock.now = start + after_s
        rounds.append(submit(crew, name, grants[name]).round)
    return rounds


def test_an_adaptive_deadline_closes_at_median_plus_k_mad_and_ignores_a_straggler(
    http: TestClient, admin: HubClient, service: HubService, clock: FakeClock, corpus_dir: Path
) -> None:
    recipe = tiny_recipe(corpus_dir, rounds=5, quorum=10, extra_run="deadline_k = 2.0")  # 600 s cap
    run_id = admin.create_run(recipe).run_id
    crew = {name: join(http, admin, run_id, name) for name in "abc"}
    late = {"a": 10.0, "b": 20.0, "c": 500.0}  # c straggles in round 2
    for number, at in enumerate(({"a": 10.0, "b": 20.0, "c": 30.0},) * 2 + (late,)):
        start = clock.now
        assert play_round(crew, clock, at) == [number] * 3  # under 3 closed rounds: 600 s
        clock.now = start + 600
        assert service.close_due_rounds() == 1
    assert arrivals(service, run_id, 0, 3) == [10, 10, 10, 20, 20, 20, 30, 30, 500]
    # median 20, MAD 10: the deadline is 20 + 2 x 10 = 40 s (a mean + 2 sd would be about 340 s)
    start = clock.now
    assert play_round(crew, clock, {"a": 10.0, "b": 20.0}) == [3, 3]
    clock.now = start + 39.5
    assert service.close_due_rounds() == 0
    clock.now = start + 40
    assert service.close_due_rounds() == 1
    last = admin.rounds(run_id)[3]
    assert (last.close_reason, last.accepted, last.wall_s) == ("deadline", 2, pytest.approx(40))


@pytest.mark.parametrize(
    ("arrivals_s", "k", "expected"),
    [
        ([10, 11, 12, 13, 1e6], 3.0, 12 + 3 * 1),  # one straggler moves the median and MAD a rank
        ([10, 20, 30], 0.0, 20),
        ([0.1, 0.1, 0.2], 3.0, MIN_DEADLINE_S),  # the floor
        ([500, 700, 900], 1.0, 600),  # never past round_deadline_s
        ([], 1.0, 600),  # nothing to go by: round_deadline_s
    ],
)
def test_adaptive_deadline_s(arrivals_s: Sequence[float], k: float, expected: float) -> None:
    assert adaptive_deadline_s(arrivals_s, k, 600.0) == pytest.approx(expected)
