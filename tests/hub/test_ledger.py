"""The ledger credits exactly the committed contributions, once, and shows what one may read."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.core.tensors import to_bytes
from tessera.hub.service import HubService
from tessera.hub.tables import LedgerEntry, Version
from tests.helpers import join, meta, tiny_recipe, work, zero_update

pytestmark = pytest.mark.timeout(120)


def test_credit_once_per_committed_contribution(
    http: TestClient, admin: HubClient, service: HubService, corpus_dir: Path
) -> None:
    created = admin.create_run(tiny_recipe(corpus_dir, rounds=3, quorum=2))
    (a, wa), (b, wb), (c, wc) = (join(http, admin, created.run_id, n) for n in "abc")
    late = work(c, wc)  # will be 2 versions behind: rejected as stale, never credited
    for _ in range(2):
        for client, wid in ((a, wa), (b, wb)):
            g = work(client, wid)
            body = to_bytes(zero_update(client, g))
            client.submit(meta(g, wid, tokens=100), body)
            client.submit(meta(g, wid, tokens=100), body)  # a retried upload: one credit
    assert c.submit(meta(late, wc), to_bytes(zero_update(c, late))).status == "rejected"
    with service.state.transaction() as s:
        entries = s.scalars(select(LedgerEntry)).all()
        committed = [cid for v in s.scalars(select(Version)) for cid in v.contributions]
    credits = [e for e in entries if e.kind == "compute"]
    debits = [e for e in entries if e.kind == "usage"]
    assert sorted(e.contribution_id for e in credits) == sorted(committed) and len(credits) == 4
    assert sorted(e.contribution_id for e in debits) == sorted(committed) and len(entries) == 8
    fpt = service.runtime(created.run_id).flops_per_token
    assert all(e.amount == pytest.approx(100 * fpt / 1e15) for e in credits)
    owner = admin.whoami().provider_id
    assert all(e.amount == pytest.approx(-100 * fpt / 1e15) and e.provider_id == owner for e in debits)
    report = admin.ledger()
    by_name = {b.name: b for b in report.providers}
    assert by_name[f"{created.run_id[:8]}-a"].contributions == 2
    assert by_name[f"{created.run_id[:8]}-c"].pflop == 0.0
    assert by_name["admin"].used_pflop == pytest.approx(4 * 100 * fpt / 1e15)  # its run took it all
    assert by_name["admin"].balance_pflop == pytest.approx(-4 * 100 * fpt / 1e15)


def test_ledger_visibility(http: TestClient, admin: HubClient, corpus_dir: Path) -> None:
    admin.create_provider("lab", kind="collective")
    member = admin.create_provider("m")
    admin.add_member("lab", "m")
    outsider = admin.create_provider("o")
    seen_by_admin = admin.ledger()
    assert {b.name for b in seen_by_admin.providers} >= {"admin", "m", "o"}
    assert [b.name for b in seen_by_admin.collectives] == ["lab"]
    mine = HubClient(http, member.token, retry_s=0).ledger()
    assert [b.name for b in mine.providers] == ["m"] and [b.name for b in mine.collectives] == ["lab"]
    theirs = HubClient(http, outsider.token, retry_s=0).ledger()
    assert [b.name for b in theirs.providers] == ["o"] and theirs.collectives == []


def test_balances_cannot_overflow(service: HubService) -> None:
    """Sums beyond SQLite's 2^63 integers: the ledger still answers (summed as floats)."""
    from tessera.hub.tables import Provider, new_run

    admin = service.providers.principal(service.providers.bootstrap_admin())
    with service.state.transaction() as s:
        s.add(Provider(id="p" * 32, name="big", kind="person", is_admin=False, created_at=0.0))
        s.flush()
        s.add(new_run("r" * 32, "big", "", "p" * 32, None, 0.0))
        s.flush()
        for i in range(3):
            s.add(
                LedgerEntry(
                    provider_id="p" * 32,
                    run_id="r" * 32,
                    contribution_id=f"c{i}",
                    version_id="v",
                    kind="compute",
                    tokens=2**62,
                    flops_per_token=1.0,
                    amount=1.0,
                    created_at=0.0,
                )  # fmt: skip
            )
    [big] = [b for b in service.ledger.report(admin).providers if b.name == "big"]
    assert big.tokens == 3 * 2**62 and big.pflop == 3.0
