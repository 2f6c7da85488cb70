"""The ledger: append-only credit for committed compute, the debit of the run that used it,
and balances read from them.

A contribution is credited once, when the version that includes it is committed (the round's
close), with ``tokens x FLOPs per token`` in PFLOP; the same amount is debited to the run's owner
(``usage``), so what a provider's own workers do on its own runs nets to zero, and a balance is
what it gave others' runs minus what others gave its runs. Rejected work, and work dropped at
the close, is never credited; a retried upload is one contribution, so one credit (unique key).
Balances are summed in floating point, so no total overflows on any backend (SQLite's integer
SUM stops at 2^63). The pool's fair share reads balances decayed by a half-life
(``decayed_balances``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import Float, Integer, case, cast, func, select
from sqlalchemy.orm import Session

from tessera.api.messages import Balance, LedgerReport
from tessera.hub.auth import Principal, may_read_ledger_of
from tessera.hub.state import State
from tessera.hub.tables import Contribution, Lease, LedgerEntry, Membership, Provider, Run, Worker

PFLOP = 1e15
BUCKET_S = 3600.0  # decayed balances sum the entries of each hour together
FORGOTTEN_HALF_LIVES = 20  # entries older than this many half-lives weigh under 1e-6: not read


def credit_compute(
    s: Session,
    run_id: str,
    version_id: str,
    contributions: Sequence[Contribution],
    flops_per_token: float,
    now: float,
) -> None:
    """Insert one compute credit per contribution committed in ``version_id``, and its usage
    debit to the run's owner."""
    run = s.get(Run, run_id)
    assert run is not None
    leases = select(Lease.id, Lease.dataset_id).where(Lease.id.in_([c.lease_id for c in contributions]))
    trained_on: dict[str, str | None] = {lease_id: dataset_id for lease_id, dataset_id in s.execute(leases)}
    for c in contributions:
        worker = s.get(Worker, c.worker_id)
        assert worker is not None  # contributions reference registered workers
        if worker.flagged_at is not None:  # caught while its round closed (tessera.hub.verify)
            continue
        amount = c.tokens * flops_per_token / PFLOP
        for provider_id, kind, signed in (
            (worker.provider_id, "compute", amount),
            (run.owner_id, "usage", -amount),
        ):
            s.add(
                LedgerEntry(
                    provider_id=provider_id,
                    run_id=run_id,
                    contribution_id=c.id,
                    version_id=version_id,
                    kind=kind,
                    tokens=c.tokens,
                    flops_per_token=flops_per_token,
                    amount=signed,
                    created_at=now,
                    dataset_id=trained_on.get(c.lease_id),
                )
            )


def decayed_balances(s: Session, now: float, half_life_s: float) -> dict[str, float]:
    """Each provider's balance with every entry weighed by 2^(-age / half_life): entries are
    summed per hour in the database and decayed here from their mean time in that hour (exact for
    an hour's entries written at once, as a round's are; off by under 0.4% of an hour's entries
    otherwise, at a half-life of a week)."""
    bucket = cast(LedgerEntry.created_at / BUCKET_S, Integer)
    rows = s.execute(
        select(LedgerEntry.provider_id, func.avg(LedgerEntry.created_at), func.sum(LedgerEntry.amount))
        .where(LedgerEntry.created_at >= now - FORGOTTEN_HALF_LIVES * half_life_s)
        .group_by(LedgerEntry.provider_id, bucket)
    ).all()
    balances: dict[str, float] = {}
    for provider_id, at, amount in rows:
        weight = math.exp2(-max(0.0, now - float(at)) / half_life_s)
        balances[provider_id] = balances.get(provider_id, 0.0) + float(amount) * weight
    return balances


class Ledger:
    def __init__(self, state: State) -> None:
        self.state = state

    def report(self, who: Principal) -> LedgerReport:
        """Balances the caller may read: everything for admins, else own and own collectives'."""
        with self.state.transaction() as s:
            sums = {
                row.provider_id: row
                for row in s.execute(
                    select(LedgerEntry.provider_id, *sums_of_kinds()).group_by(LedgerEntry.provider_id)
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
                select(Provider, *sums_of_kinds())
                .join(Provider, Provider.id == LedgerEntry.provider_id)
                .where(LedgerEntry.run_id == run_id, LedgerEntry.kind.in_(("compute", "correction")))
                .group_by(Provider.id)
            ).all()
            credits = [balance(row[0], row) for row in rows]
        return sorted(credits, key=lambda b: (-b.pflop, b.name))


def sums_of_kinds() -> tuple[object, ...]:
    """The columns of a balance: compute earned less what was taken back (PFLOP, tokens,
    contributions) and compute used less what was refunded (PFLOP, a positive number), summed in
    one pass."""
    earned = LedgerEntry.kind == "compute"
    taken_back = LedgerEntry.kind == "correction"
    kept = earned | taken_back
    return (
        func.sum(case((kept, LedgerEntry.amount), else_=0.0)).label("pflop"),
        func.sum(
            case(
                (earned, cast(LedgerEntry.tokens, Float)),
                (taken_back, -cast(LedgerEntry.tokens, Float)),
                else_=0.0,
            )
        ).label("tokens"),
        func.sum(case((earned, 1), (taken_back, -1), else_=0)).label("n"),
        func.sum(case((LedgerEntry.kind.in_(("usage", "refund")), -LedgerEntry.amount), else_=0.0)).label(
            "used"
        ),
    )


def balance(p: Provider, row: object | None) -> Balance:
    return Balance(
        provider_id=p.id,
        name=p.name,
        kind=p.kind,
        pflop=float(getattr(row, "pflop", 0.0) or 0.0),
        tokens=int(getattr(row, "tokens", 0) or 0),
        contributions=int(getattr(row, "n", 0) or 0),
        used_pflop=float(getattr(row, "used", 0.0) or 0.0),
    )


def total(p: Provider, parts: list[Balance]) -> Balance:
    return Balance(
        provider_id=p.id,
        name=p.name,
        kind=p.kind,
        pflop=sum(b.pflop for b in parts),
        tokens=sum(b.tokens for b in parts),
        contributions=sum(b.contributions for b in parts),
        used_pflop=sum(b.used_pflop for b in parts),
    )
