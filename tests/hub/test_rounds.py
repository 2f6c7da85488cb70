"""A round closes off the request path and without holding its run: while it aggregates and
evaluates, the run's leases, uploads and downloads (and other runs) are served; work that arrives
meanwhile counts in the next round, or, if the close fails, in the round that starts again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.core.tensors import TensorDict, to_bytes
from tessera.hub.service import HubService
from tessera.testing.cluster import wait_until
from tests.helpers import join, meta, tiny_recipe, work, zero_update

pytestmark = pytest.mark.timeout(120)


@dataclass
class HeldClose:
    """The run's evaluation held at its start until ``release`` (or failing, with ``fail``)."""

    entered: threading.Event
    release: threading.Event
    fail: bool = False


@pytest.fixture
def held() -> Iterator[HeldClose]:
    hold = HeldClose(threading.Event(), threading.Event())
    yield hold
    hold.release.set()


def hold_evaluation(service: HubService, run_id: str, hold: HeldClose) -> None:
    runtime = service.runtime(run_id)
    evaluate = runtime.evaluate

    def held_evaluate(tensors: TensorDict) -> float:
        hold.entered.set()
        assert hold.release.wait(60), "the test never released the close"
        if hold.fail:
            raise RuntimeError("evaluation failed on purpose")
        return evaluate(tensors)

    runtime.evaluate = held_evaluate  # type: ignore[method-assign]


def upload(service: HubService, client: HubClient, worker_id: str) -> tuple[str, int]:
    """A contribution recorded without closing (as the HTTP route records it before replying)."""
    grant = work(client, worker_id)
    who = service.providers.principal(client.token or "")
    reply = service.submit(client.run_id, who, meta(grant, worker_id), to_bytes(zero_update(client, grant)))
    return reply.status, reply.round


def test_a_closing_round_serves_its_run_and_counts_late_work_in_the_next(
    http: TestClient, admin: HubClient, service: HubService, corpus_dir: Path, held: HeldClose
) -> None:
    run_id = admin.create_run(tiny_recipe(corpus_dir, rounds=3, quorum=2)).run_id
    other = admin.create_run(tiny_recipe(corpus_dir)).run_id
    (a, wa), (b, wb), (c, wc) = (join(http, admin, run_id, n) for n in "abc")
    late = work(c, wc)  # c leased before the close began
    assert upload(service, a, wa) == ("accepted", 0) and upload(service, b, wb) == ("accepted", 0)
    hold_evaluation(service, run_id, held)
    closer = threading.Thread(target=service.close_if_due, args=(run_id,))
    closer.start()
    assert held.entered.wait(60)
    # the close holds no lock of its run: everything below is answered while it evaluates
    assert admin.rounds(run_id)[0].status == "closing"
    assert a.lease(wa).status == "wait"  # a contributed to round 0
    d, wd = join(http, admin, run_id, "d")
    assert d.lease(wd).status == "wait"  # no new lease on a version about to be replaced
    assert c.lease(wc).lease == late  # c's open lease is still its own
    c_who = service.providers.principal(c.token or "")
    reply = service.submit(run_id, c_who, meta(late, wc), to_bytes(zero_update(c, late)))
    assert reply.status == "accepted" and reply.round == 1 and reply.weight == 32  # stale by one: 64 / 2
    assert len(a.blob(late.blob_sha256)) == late.nbytes  # downloads go on
    (e, we) = join(http, admin, other, "e")
    assert work(e, we).round == 0  # and so do other runs
    held.release.set()
    closer.join(60)
    rounds = admin.rounds(run_id)
    assert rounds[0].status == "closed" and rounds[0].accepted == 2
    assert rounds[1].status == "open" and rounds[1].accepted == 1 and rounds[1].tokens == 64
    assert admin.status(run_id).rounds_done == 1
    assert d.lease(wd).lease is not None  # now on version 1


def test_a_close_that_fails_restarts_its_round_with_the_work_that_arrived_meanwhile(
    http: TestClient, admin: HubClient, service: HubService, corpus_dir: Path, held: HeldClose
) -> None:
    run_id = admin.create_run(tiny_recipe(corpus_dir, rounds=3, quorum=2)).run_id
    (a, wa), (b, wb), (c, wc) = (join(http, admin, run_id, n) for n in "abc")
    late = work(c, wc)
    assert upload(service, a, wa) == upload(service, b, wb) == ("accepted", 0)
    hold_evaluation(service, run_id, held)
    held.fail = True
    closer = threading.Thread(target=service.close_if_due, args=(run_id,))
    closer.start()
    assert held.entered.wait(60)
    c_who = service.providers.principal(c.token or "")
    assert service.submit(run_id, c_who, meta(late, wc), to_bytes(zero_update(c, late))).round == 1
    held.release.set()
    closer.join(60)
    [first] = admin.rounds(run_id)
    assert first.status == "open" and first.failures == 1 and first.rejected == 2 and first.accepted == 1
    statuses = {x.worker_id: (x.status, x.round, x.weight) for x in admin.contributions(run_id)}
    assert statuses[wc] == ("accepted", 0, 64.0)  # based on version 0: counts in round 0, unweighted
    assert statuses[wa][0] == statuses[wb][0] == "rejected"
    wait_until(lambda: "could not close" in (admin.status(run_id).error or ""), 10, "the failure's record")


def test_an_upload_is_told_once_whether_it_counts(
    http: TestClient, admin: HubClient, corpus_dir: Path
) -> None:
    """Final at upload; pending (not final) where the round's close checks directions, until then."""
    plain = admin.create_run(tiny_recipe(corpus_dir, quorum=3)).run_id
    checked = admin.create_run(
        tiny_recipe(corpus_dir, quorum=3, extra="[aggregation]\nmin_cosine = 0.1\n")
    ).run_id
    for run_id, status, final in ((plain, "accepted", True), (checked, "pending", False)):
        workers = [join(http, admin, run_id, n) for n in "abc"]
        replies = []
        for client, worker_id in workers:
            grant = work(client, worker_id)
            replies.append(client.submit(meta(grant, worker_id), to_bytes(zero_update(client, grant))))
        assert [(r.status, r.final) for r in replies[:2]] == [(status, final)] * 2
        assert admin.status(run_id).rounds_done == 1  # the third closed the round, after its reply
        assert [c.status for c in admin.contributions(run_id, 0)] == ["accepted"] * 3  # the round's word


def test_an_upload_after_the_run_finished_is_recorded_as_not_needed(
    http: TestClient, admin: HubClient, corpus_dir: Path
) -> None:
    run_id = admin.create_run(tiny_recipe(corpus_dir, rounds=1, quorum=1)).run_id
    (a, wa), (b, wb) = join(http, admin, run_id, "a"), join(http, admin, run_id, "b")
    ga, gb = work(a, wa), work(b, wb)
    a.submit(meta(ga, wa), to_bytes(zero_update(a, ga)))
    assert admin.status(run_id).status == "finished"
    late = b.submit(meta(gb, wb), to_bytes(zero_update(b, gb)))
    assert late.status == "rejected" and late.final and "finished" in (late.reason or "")
