"""Where a pool worker works next: whole workers placed to follow the fair-share entitlements.

A worker asks at every round boundary. It goes to the run among those it may work on that is
furthest below its entitlement, preferring the targets of its provider's pledges; it stays where
it is while it has been there less than ``min_stay_s`` (bounded preemption), and otherwise also
unless another run is short by at least one worker more than its own (no moving back and forth
over a fraction of a worker).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Standing:
    """A run's place in the pool now: workers it is entitled to, has, and can use."""

    entitled: float
    current: int
    demand: float

    def wants(self) -> bool:
        return self.current < self.demand


@dataclass(frozen=True)
class Position:
    """Where the asking worker is: its run (None: nowhere yet) and for how long."""

    run_id: str | None
    stayed_s: float


def shortfall(run_id: str, standings: Mapping[str, Standing], here: str | None) -> float:
    """Workers the run is short of its entitlement, the asking worker not counted."""
    st = standings[run_id]
    return st.entitled - (st.current - (run_id == here))


def choose(
    eligible: Sequence[str],
    preferred: Sequence[str],
    standings: Mapping[str, Standing],
    position: Position,
    min_stay_s: float,
) -> str | None:
    """The run to work on next (None: none of ``eligible`` wants a worker). ``preferred``: the
    runs the worker's pledges point at, served before the pool."""
    here = position.run_id if position.run_id in eligible else None
    if here is not None and position.stayed_s < min_stay_s:
        return here
    wanting = [r for r in eligible if r == here or standings[r].wants()]
    if not wanting:
        return None
    pledged = [r for r in preferred if r in wanting]
    candidates = pledged or wanting
    best = max(candidates, key=lambda r: (shortfall(r, standings, here), r == here))
    if here in candidates and shortfall(here, standings, here) >= shortfall(best, standings, here) - 1.0:
        return here
    return best
