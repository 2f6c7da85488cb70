"""Fair share with memory: how many of the pool's workers each run waiting for them is entitled
to, from what its owner (and its collective) gave the commons and what their runs took.

The formula (also in docs/design.md, "The pool"):

    balance  B_p = sum of p's ledger entries, each weighed 2^(-age / half_life): compute credited
             is positive, compute p's runs used is negative (PFLOP; ``tessera.hub.ledger``)
    account  a run counts against its collective's account if it has one, else its owner's;
             a collective's balance is its own plus its members'
    weight   2^clamp(B / pflop_per_point, -MAX_POINTS, MAX_POINTS) for an account and for an
             owner within a collective; 2^priority for a run within its owner's runs
    shares   the workers are divided among accounts by weight, within an account among owners
             by weight, within an owner among its runs by weight; each part is capped by what
             its runs can use, and what a cap leaves goes to the others (water-filling); first,
             every account with work gets ``min_share`` of the pool (nobody starves)

Entitlements are fractional workers; ``tessera.pool.schedule`` places whole workers to follow them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tessera.errors import ConfigError

MAX_POINTS = 10.0  # a balance moves a weight by at most 2^10 either way
DAY_S = 86400.0


@dataclass(frozen=True)
class FairShareSettings:
    """The hub's fair-share knobs (``[pool]`` in the hub's config)."""

    half_life_s: float = 7 * DAY_S  # a week-old credit or debit counts half
    pflop_per_point: float = 1.0  # balance that doubles (or halves) a weight
    min_share: float = 0.05  # of the pool's workers, for every account with work

    def __post_init__(self) -> None:
        if not 60.0 <= self.half_life_s <= 3650 * DAY_S:
            raise ConfigError(f"pool.half_life_s must be from 60 s to 10 years, got {self.half_life_s}")
        if not 1e-9 <= self.pflop_per_point <= 1e12:
            raise ConfigError(f"pool.pflop_per_point must be from 1e-9 to 1e12, got {self.pflop_per_point}")
        if not 0.0 <= self.min_share <= 0.5:
            raise ConfigError(f"pool.min_share must be from 0 to 0.5, got {self.min_share}")


@dataclass(frozen=True)
class Claim:
    """A run that wants workers from the pool: up to ``demand`` of them."""

    run_id: str
    owner_id: str
    collective_id: str | None
    priority: float
    demand: float


def points(balance: float, settings: FairShareSettings) -> float:
    """A balance in priority points, clamped to +-MAX_POINTS."""
    return max(-MAX_POINTS, min(MAX_POINTS, balance / settings.pflop_per_point))


def account_of(claim: Claim) -> str:
    return claim.collective_id or claim.owner_id


def account_balances(balances: Mapping[str, float], members: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Every provider's balance, a collective's with its members' added."""
    summed = dict(balances)
    for collective, ids in members.items():
        summed[collective] = balances.get(collective, 0.0) + sum(balances.get(m, 0.0) for m in ids)
    return summed


def score(claim: Claim, balances: Mapping[str, float], settings: FairShareSettings) -> float:
    """One number to order runs by (``tessera queue``): the run's priority plus its account's
    points, plus its owner's within a collective."""
    own = points(balances.get(claim.owner_id, 0.0), settings) if claim.collective_id else 0.0
    return claim.priority + points(balances.get(account_of(claim), 0.0), settings) + own


def entitlements(
    capacity: float, claims: Sequence[Claim], balances: Mapping[str, float], settings: FairShareSettings
) -> dict[str, float]:
    """Each claiming run's entitled workers out of ``capacity`` (``balances``: per provider and
    per collective, as ``account_balances`` gives them)."""
    by_account: dict[str, list[Claim]] = defaultdict(list)
    for c in claims:
        by_account[account_of(c)].append(c)
    accounts = list(by_account)
    floor = settings.min_share * capacity
    weights = [math.exp2(points(balances.get(a, 0.0), settings)) for a in accounts]
    caps = [sum(c.demand for c in by_account[a]) for a in accounts]
    given = water_fill(capacity, weights, caps, floor)
    entitled: dict[str, float] = {}
    for account, workers in zip(accounts, given, strict=True):
        entitled.update(within_account(workers, by_account[account], balances, settings))
    return entitled


def within_account(
    workers: float, claims: Sequence[Claim], balances: Mapping[str, float], settings: FairShareSettings
) -> dict[str, float]:
    """An account's workers among its owners (by their own balances, in a collective), then among
    each owner's runs (by priority)."""
    by_owner: dict[str, list[Claim]] = defaultdict(list)
    for c in claims:
        by_owner[c.owner_id].append(c)
    owners = list(by_owner)
    collective = claims[0].collective_id is not None
    weights = [math.exp2(points(balances.get(o, 0.0), settings)) if collective else 1.0 for o in owners]
    caps = [sum(c.demand for c in by_owner[o]) for o in owners]
    entitled: dict[str, float] = {}
    for owner, share in zip(owners, water_fill(workers, weights, caps), strict=True):
        runs = by_owner[owner]
        run_weights = [math.exp2(max(-MAX_POINTS, min(MAX_POINTS, c.priority))) for c in runs]
        for c, n in zip(runs, water_fill(share, run_weights, [c.demand for c in runs]), strict=True):
            entitled[c.run_id] = n
    return entitled


def water_fill(
    capacity: float, weights: Sequence[float], caps: Sequence[float], floor: float = 0.0
) -> list[float]:
    """``capacity`` divided in proportion to ``weights``, no part above its cap, what a cap leaves
    going to the others; each part first gets ``floor`` (within its cap; scaled down together if
    the floors alone exceed the capacity)."""
    given = [min(floor, cap) for cap in caps]
    if sum(given) > capacity:
        scale = capacity / sum(given)
        return [g * scale for g in given]
    left = capacity - sum(given)
    open_ = [i for i, cap in enumerate(caps) if given[i] < cap]
    while left > 1e-12 and open_:
        total = sum(weights[i] for i in open_)
        full = [i for i in open_ if given[i] + left * weights[i] / total >= caps[i]]
        if not full:
            for i in open_:
                given[i] += left * weights[i] / total
            break
        for i in full:
            left -= caps[i] - given[i]
            given[i] = caps[i]
        open_ = [i for i in open_ if i not in full]
    return given
