"""Schedules over a whole run: the inner steps each round takes (the sync schedule) and the
inner learning rate at each point of the run. Pure arithmetic on the recipe's ``[train]``
settings and its number of rounds; the hub, its replays, the workers and the benchmarks all
ask this module, so they agree step for step.

- Sync schedule: round r trains ``inner_steps_by_round[r]`` steps (H), and the rounds past the
  list ``inner_steps`` (post-local SGD's idea: short rounds while the model moves fast, long
  ones later, for few extra bytes; the README says what it was measured to give).
- Learning rate: a linear warm-up over the run's first ``warmup_steps`` (0: none), then
  ``lr_schedule = "constant"`` keeps ``lr``; ``"cosine"`` follows a cosine down to
  ``final_lr_fraction * lr`` at the run's last step. The steps are the run's nominal ones (the
  sum of every round's H), so one schedule spans all rounds; a worker whose lease has another H
  than the round's (balanced or planned steps, a window that ends early) is placed on it in
  proportion: its step j of h is at ``start(r) + j * H_r / h``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

LR_SCHEDULES = ("constant", "cosine")


def lr_fraction(schedule: str, step: float, total: float, warmup: int, final: float) -> float:
    """The fraction of the base learning rate at (nominal) ``step`` (from 0) of ``total``: a
    linear warm-up over the first ``warmup`` steps, then 1 for a constant schedule, or a cosine
    from 1 at step ``warmup`` to ``final`` at the last step, ``total - 1``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1.0, total - 1 - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class RunSchedule:
    """A run's rounds laid end to end: where each starts, in nominal inner steps, and its H."""

    inner_steps: int
    by_round: tuple[int, ...]
    rounds: int
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float = 0.1

    def steps(self, round_number: int) -> int:
        """H of round ``round_number`` (from 0): the list's entry, else ``inner_steps``."""
        by_round = self.by_round
        return by_round[round_number] if round_number < len(by_round) else self.inner_steps

    def start(self, round_number: int) -> int:
        """The nominal steps of the rounds before ``round_number``."""
        listed = sum(self.by_round[:round_number])
        return listed + max(0, round_number - len(self.by_round)) * self.inner_steps

    @property
    def total_steps(self) -> int:
        return self.start(self.rounds)

    def lr_at(self, step: float) -> float:
        """The fraction of the base learning rate at nominal ``step`` of the run."""
        return lr_fraction(
            self.lr_schedule, step, self.total_steps, self.warmup_steps, self.final_lr_fraction
        )

    def lr_scale(self, round_number: int, steps: int) -> Callable[[int], float]:
        """For a lease of ``steps`` steps in round ``round_number``: the fraction of the base
        learning rate at each of its steps (0-based)."""
        start, nominal = self.start(round_number), self.steps(round_number)
        stride = nominal / max(1, steps)
        return lambda j: self.lr_at(start + min(j * stride, nominal - 1e-9))
