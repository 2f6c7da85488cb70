"""Who may read a dataset version (its metadata, its files and its lineage alike: metadata is no
more visible than the data), and why.

| visibility   | who may read, besides its owner and the hub's admins                           |
| ------------ | ------------------------------------------------------------------------------ |
| public       | every provider of the hub                                                       |
| collective   | the dataset's collective and its members                                        |
| contributors | providers whose credited compute (the ledger's compute less corrections) to the |
|              | owner's runs, or to one named run, reaches the owner's threshold; a collective's|
|              | credit is its members' together, and counts for each member                     |
| private      | no one: its files never leave its owner's nodes                                 |

An owner may revoke one provider's access (and restore it); a revocation wins over anything
earned. Every decision for a (dataset, provider) pair is recorded when it first differs from the
last one recorded, so grants and refusals have a history; ``explain`` says which rule decided.
Those who may not read a version are told it does not exist (404), except by ``explain``, which
tells a provider the terms it has not met (owner and threshold), never the dataset's contents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, func, or_, select, true
from sqlalchemy.orm import Session

from tessera.api.commons import AccessExplanation
from tessera.errors import Forbidden, NotFound
from tessera.hub import queries
from tessera.hub.auth import Principal
from tessera.hub.tables import (
    AccessDecision,
    AccessRevocation,
    Dataset,
    LedgerEntry,
    Membership,
    Provider,
    Run,
)

EARNING = ("compute", "correction")


@dataclass(frozen=True)
class Decision:
    granted: bool
    reason: str
    credit_pflop: float | None = None


def not_found(dataset_id: str) -> NotFound:
    return NotFound(f"no dataset version {dataset_id} that you may read; check the id, or ask its owner")


def credit_to(s: Session, provider_ids: list[str], d: Dataset) -> float:
    """Compute credited to these providers on the runs that count for ``d``'s threshold."""
    if d.threshold_run_id is not None:
        runs = select(Run.id).where(or_(Run.id == d.threshold_run_id, Run.parent_id == d.threshold_run_id))
    else:
        runs = select(Run.id).where(Run.owner_id == d.owner_id)
    total = s.scalar(
        select(func.sum(LedgerEntry.amount)).where(
            LedgerEntry.provider_id.in_(provider_ids),
            LedgerEntry.kind.in_(EARNING),
            LedgerEntry.run_id.in_(runs),
        )
    )
    return float(total or 0.0)


def members_of(s: Session, collective_id: str) -> list[str]:
    return list(s.scalars(select(Membership.member_id).where(Membership.collective_id == collective_id)))


def earned(s: Session, who: Principal, d: Dataset) -> Decision:
    """Whether ``who``'s credit (or one of its collectives') reaches ``d``'s threshold."""
    threshold = d.threshold_pflop or 0.0
    scope = f"run {d.threshold_run_id}" if d.threshold_run_id else "the owner's runs"
    own = credit_to(s, [who.provider_id, *members_of(s, who.provider_id)], d)
    best, whose = own, "your"
    for collective_id in sorted(who.collectives):
        credit = credit_to(s, members_of(s, collective_id), d)
        if credit > best:
            name = s.scalar(select(Provider.name).where(Provider.id == collective_id))
            best, whose = credit, f"your collective {name}'s"
    if best >= threshold:
        return Decision(
            True, f"{whose} credited compute to {scope}, {best:.4g} PFLOP, reaches {threshold:.4g}", best
        )
    return Decision(
        False,
        f"{whose} credited compute to {scope} is {best:.4g} PFLOP, below the owner's threshold of "
        f"{threshold:.4g}; "
        "contribute compute to those runs to earn access",
        best,
    )


@dataclass
class Memo:
    """What ``decide`` looked up for one caller, kept while it decides on many versions (a
    listing): the versions revoked for it, and its credit per owner and run."""

    revoked: dict[str, AccessRevocation] | None = None
    earned: dict[tuple[str, str | None, float | None], Decision] = field(default_factory=dict)


def revocation(s: Session, who: Principal, d: Dataset, memo: Memo | None) -> AccessRevocation | None:
    if memo is None:
        return s.get(AccessRevocation, (d.id, who.provider_id))
    if memo.revoked is None:
        rows = s.scalars(select(AccessRevocation).where(AccessRevocation.provider_id == who.provider_id))
        memo.revoked = {r.dataset_id: r for r in rows}
    return memo.revoked.get(d.id)


def decide(s: Session, who: Principal, d: Dataset, memo: Memo | None = None) -> Decision:
    """Whether ``who`` may read dataset version ``d``, and the rule that says so (``memo``: the
    lookups kept from deciding on other versions for the same caller)."""
    if who.provider_id == d.owner_id:
        return Decision(True, "you own it")
    if who.is_admin:
        return Decision(True, "you are a hub admin")
    revoked = revocation(s, who, d, memo)
    if revoked is not None:
        return Decision(
            False, f"its owner revoked your access{': ' + revoked.reason if revoked.reason else ''}"
        )
    if d.visibility == "public":
        return Decision(True, "it is public")
    if d.visibility == "collective":
        mine = d.collective_id in who.collectives or d.collective_id == who.provider_id
        return Decision(mine, "its collective's members may read it" + ("" if mine else "; you are not one"))
    if d.visibility == "contributors":
        if memo is None:
            return earned(s, who, d)
        key = (d.owner_id, d.threshold_run_id, d.threshold_pflop)
        if key not in memo.earned:
            memo.earned[key] = earned(s, who, d)
        return memo.earned[key]
    return Decision(False, "it is private: its files stay with its owner")


def maybe_visible(who: Principal) -> ColumnElement[bool]:
    """A condition on versions that holds for every one ``who`` may read (and some it may not:
    ``decide`` has the last word), so a listing decides on few rows."""
    if who.is_admin:
        return true()
    collectives = [*who.collectives, who.provider_id]
    return or_(
        Dataset.owner_id == who.provider_id,
        Dataset.visibility.in_(("public", "contributors")),
        (Dataset.visibility == "collective") & Dataset.collective_id.in_(collectives),
    )


def record(s: Session, dataset_id: str, provider_id: str, decision: Decision, now: float) -> None:
    """Append the decision unless it is the same as the last one recorded for the pair."""
    last = s.scalars(
        select(AccessDecision)
        .where(AccessDecision.dataset_id == dataset_id, AccessDecision.provider_id == provider_id)
        .order_by(AccessDecision.id.desc())
        .limit(1)
    ).first()
    if last is None or last.granted != decision.granted:
        s.add(AccessDecision(dataset_id=dataset_id, provider_id=provider_id, granted=decision.granted,
                             reason=decision.reason, at=now))  # fmt: skip


def check(s: Session, who: Principal, dataset_id: str, now: float) -> Decision:
    """Whether ``who`` may read the version (a missing one: no), the decision recorded; the
    caller commits it before refusing, so refusals are kept too."""
    d = s.get(Dataset, dataset_id)
    if d is None:
        return Decision(False, "no such version")
    decision = decide(s, who, d)
    if d.owner_id != who.provider_id and not who.is_admin:
        record(s, d.id, who.provider_id, decision, now)
    return decision


def readable(s: Session, who: Principal, dataset_id: str) -> Dataset:
    """The dataset version, if ``who`` may read it; else 404."""
    d = s.get(Dataset, dataset_id)
    if d is None or not decide(s, who, d).granted:
        raise not_found(dataset_id)
    return d


def owned(s: Session, who: Principal, dataset_id: str, action: str) -> Dataset:
    """The dataset version, if ``who`` owns it (or is a hub admin): 403 for a reader, else 404."""
    d = s.get(Dataset, dataset_id)
    if d is None:
        raise not_found(dataset_id)
    if d.owner_id == who.provider_id or who.is_admin:
        return d
    if decide(s, who, d).granted:
        raise Forbidden(f"only dataset {dataset_id}'s owner (or a hub admin) may {action}")
    raise not_found(dataset_id)


def principal_of(s: Session, p: Provider) -> Principal:
    """The principal a provider's own token would give."""
    return Principal(p.id, p.name, p.is_admin, frozenset(queries.collectives_of(s, p.id)))


def explain(s: Session, who: Principal, dataset_id: str, provider: Provider, now: float) -> AccessExplanation:
    """Why ``provider`` may or may not read the dataset version, asked by its owner, an admin, or
    the provider itself (told only a contributors version's terms, unless it may read it)."""
    d = s.get(Dataset, dataset_id)
    if d is None:
        raise not_found(dataset_id)
    principal = principal_of(s, provider)
    decision = decide(s, principal, d)
    if who.provider_id != d.owner_id and not who.is_admin:
        if who.provider_id != provider.id:
            if decide(s, who, d).granted:
                raise Forbidden(
                    "only a dataset's owner, a hub admin or the provider itself may ask why it has access"
                )
            raise not_found(dataset_id)
        if not decision.granted and d.visibility != "contributors":
            raise not_found(dataset_id)
    if principal.provider_id != d.owner_id and not principal.is_admin:
        record(s, d.id, provider.id, decision, now)
    return AccessExplanation(
        dataset_id=d.id,
        provider=provider.name,
        granted=decision.granted,
        reason=decision.reason,
        credit_pflop=decision.credit_pflop,
        threshold_pflop=d.threshold_pflop,
    )
