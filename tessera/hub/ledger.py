"""The ledger: append-only credit for committed compute, and balances read from it.

A contribution is credited once, when the version that includes it is committed (the round's
close), with ``tokens x FLOPs per token`` in PFLOP. Rejected work, and work dropped at the
close, is never credited; a retried upload is one contribution, so one credit (unique key).
Balances are summed in floating point, so no total overflows on any backend (SQLite's integer
SUM stops at 2^63).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Float, cast, func, select
from sqlalchemy.orm import Session

from tessera.api.messages import Balance, LedgerReport
from tessera.hub.auth import Principal, may_read_ledger_of
from tessera.hub.state import State
from tessera.hub.tables import Contribution, LedgerEntry, Membership, Provider, Worker

PFLOP = 1e15


def credit_compute(
    s: Session,
    run_id: str,
    version_id: str,
    contributions: Sequence[Contribution],
    flops_per_token: float,
    now: float,
) -> None:
    """Insert one compute credit per contribution committed in ``version_id``."""
    for c in contributions:
        worker = s.get(Worker, c.worker_id)
        assert worker is not None  # contributions reference registered workers
        s.add(
            LedgerEntry(
                provider_id=worker.provider_id,
                run_id=run_id,
                contribution_id=c.id,
                version_id=version_id,
                kind="compute",
                tokens=c.tokens,
                flops_per_token=flops_per_token,
                amount=c.tokens * flops_per_token / PFLOP,
                created_at=now,
            )
        )


class Ledger:
    def __init__(self, state: State) -> None:
        self.state = state

    def report(self, who: Principal) -> LedgerReport:
        """Balances the caller may read: everything for admins, else own and own collectives'."""
        with self.state.transaction() as s:
            sums = {
                row.provider_id: row
                for row in s.execute(
                    select(
                        LedgerEntry.provider_id,
                        func.sum(LedgerEntry.amount).label("pflop"),
                        func.sum(cast(LedgerEntry.tokens, Float)).label("tokens"),
                        func.count().label("n"),
                    ).group_by(LedgerEntry.provider_id)
                )
            }
            providers = s.scalars(select(Provider).order_by(Provider.name)).all()
            members = s.execute(select(Membership.collective_id, Membership.member_id)).all()
        balances = {p.id: balance(p, sums.get(p.id)) for p in providers if p.kind != "collective"}
        collectives = []
        for p in providers:
            if p.kind == "collective" and may_read_ledger_of(who, p.id):
                ids = [m for c, m in members if c == p.id]
                collectives.append(total(p, [balances[i] for i in ids if i in balances]))
        visible = [b for pid, b in balances.items() if may_read_ledger_of(who, pid)]
        return LedgerReport(providers=visible, collectives=collectives)

    def run_credits(self, run_id: str) -> list[Balance]:
        """What each provider was credited for one run (whoever may read the run sees it: a
        model's contributors are part of its record), most compute first."""
        with self.state.reading() as s:
            rows = s.execute(
                select(
                    Provider,
                    func.sum(LedgerEntry.amount).label("pflop"),
                    func.sum(cast(LedgerEntry.tokens, Float)).label("tokens"),
                    func.count().label("n"),
                )
                .join(Provider, Provider.id == LedgerEntry.provider_id)
                .where(LedgerEntry.run_id == run_id)
                .group_by(Provider.id)
            ).all()
            credits = [balance(row[0], row) for row in rows]
        return sorted(credits, key=lambda b: (-b.pflop, b.name))


def balance(p: Provider, row: object | None) -> Balance:
    pflop = float(getattr(row, "pflop", 0.0) or 0.0)
    return Balance(
        provider_id=p.id,
        name=p.name,
        kind=p.kind,
        pflop=pflop,
        tokens=int(getattr(row, "tokens", 0) or 0),
        contributions=int(getattr(row, "n", 0) or 0),
    )


def total(p: Provider, parts: list[Balance]) -> Balance:
    return Balance(
        provider_id=p.id,
        name=p.name,
        kind=p.kind,
        pflop=sum(b.pflop for b in parts),
        tokens=sum(b.tokens for b in parts),
        contributions=sum(b.contributions for b in parts),
    )
