"""The fair-share formula and the placement of whole workers (pure functions)."""

from __future__ import annotations

import math

import pytest

from tessera.errors import ConfigError
from tessera.pool.fairshare import (
    Claim,
    FairShareSettings,
    account_balances,
    entitlements,
    score,
    water_fill,
)
from tessera.pool.schedule import Position, Standing, choose

pytestmark = pytest.mark.timeout(60)
FS = FairShareSettings(min_share=0.0)


def test_water_filling_caps_parts_and_hands_on_what_they_leave() -> None:
    assert water_fill(10, [1, 1], [100, 100]) == pytest.approx([5, 5])
    assert water_fill(10, [1, 1, 2], [2, 100, 100]) == pytest.approx([2, 8 / 3, 16 / 3])
    assert water_fill(10, [1, 1], [3, 4]) == pytest.approx([3, 4])  # less demand than capacity
    assert water_fill(10, [1, 100], [100, 100], floor=1.0) == pytest.approx([1 + 8 / 101, 1 + 800 / 101])
    assert water_fill(1, [1, 1, 1, 1], [5, 5, 5, 5], floor=0.5) == pytest.approx([0.25] * 4)  # floors scaled


def test_entitlements_follow_balances_collectives_and_priorities() -> None:
    claims = [
        Claim("a", "alice", None, 0.0, 100),
        Claim("b", "bob", None, 0.0, 100),
        Claim("c1", "carol", "lab", 0.0, 100),
        Claim("c2", "dave", "lab", 1.0, 100),
    ]
    balances = account_balances(
        {"alice": 1.0, "bob": 0.0, "carol": 1.0, "dave": 0.0}, {"lab": ["carol", "dave"]}
    )
    got = entitlements(70, claims, balances, FS)
    # accounts alice (2^1), bob (2^0), lab (2^1): 28, 14, 28; inside lab carol 2^1 : dave 2^0
    assert got["a"] == pytest.approx(28) and got["b"] == pytest.approx(14)
    assert got["c1"] == pytest.approx(28 * 2 / 3) and got["c2"] == pytest.approx(28 / 3)
    assert sum(got.values()) == pytest.approx(70)
    assert score(claims[3], balances, FS) == pytest.approx(1.0 + 1.0 + 0.0)  # priority + lab + dave


def test_nobody_starves_and_balances_are_clamped() -> None:
    settings = FairShareSettings(min_share=0.1)
    claims = [Claim("rich", "r", None, 0.0, 100), Claim("poor", "p", None, 0.0, 100)]
    got = entitlements(100, claims, {"r": 1e9, "p": -1e9}, settings)
    assert got["poor"] == pytest.approx(10 + 80 / (2**20 + 1))  # its floor, and a sliver
    with pytest.raises(ConfigError, match="min_share"):
        FairShareSettings(min_share=0.9)


def test_a_worker_goes_where_it_is_most_wanted_and_stays_its_minimum() -> None:
    standings = {"a": Standing(3.0, 1, 4), "b": Standing(1.0, 0, 4), "full": Standing(2.0, 2, 2)}
    assert choose(["a", "b", "full"], [], standings, Position(None, 0), 600) == "a"
    assert choose(["a", "b"], ["b"], standings, Position(None, 0), 600) == "b"  # its pledge first
    assert choose(["full"], [], standings, Position(None, 0), 600) is None
    over = {"a": Standing(0.5, 3, 4), "b": Standing(2.0, 0, 4)}
    assert choose(["a", "b"], [], over, Position("a", 100), 600) == "a"  # within its minimum stay
    assert choose(["a", "b"], [], over, Position("a", 700), 600) == "b"  # short by 2 vs -1.5
    near = {"a": Standing(1.6, 2, 4), "b": Standing(1.4, 1, 4)}
    assert choose(["a", "b"], [], near, Position("a", 700), 600) == "a"  # no move for a fraction
    assert choose(["b"], [], {"b": Standing(math.inf, 5, math.inf)}, Position(None, 0), 0) == "b"
