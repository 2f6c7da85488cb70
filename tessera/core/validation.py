"""Validation before aggregation: decisions on numbers the hub measured, no I/O here.

- norm bound: a contribution whose L2 norm exceeds ``norm_bound`` times the median norm of
  the contributions accepted in this and the previous round is rejected (needs at least
  ``norm_history_min`` of them to judge);
- quality probe: the hub applies the candidate to its base version with the share it would
  have in the round's average (``base - delta / quorum``) and measures held-out loss on a few
  probe batches; a candidate worse than the base by more than ``probe_tolerance`` (relative)
  is rejected. (Applied whole, an honest update trained on one domain can look worse on the
  mixed held-out data than it is as part of the average.)
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tessera.errors import ConfigError


@dataclass(frozen=True)
class ValidationSettings:
    norm_bound: float = 0.0  # 0: off
    norm_history_min: int = 3
    probe: bool = False
    probe_tolerance: float = 0.1
    probe_batches: int = 2

    def __post_init__(self) -> None:
        if self.norm_bound < 0:
            raise ConfigError(
                f"validation.norm_bound cannot be negative (0 turns it off), got {self.norm_bound}"
            )
        if self.norm_history_min < 1:
            raise ConfigError(f"validation.norm_history_min must be at least 1, got {self.norm_history_min}")
        if self.probe_tolerance < 0:
            raise ConfigError(f"validation.probe_tolerance cannot be negative, got {self.probe_tolerance}")
        if self.probe_batches < 1:
            raise ConfigError(f"validation.probe_batches must be at least 1, got {self.probe_batches}")


def norm_verdict(norm: float, history: Sequence[float], settings: ValidationSettings) -> str | None:
    """A rejection reason, or None when the norm is acceptable (or cannot be judged yet)."""
    if settings.norm_bound == 0 or len(history) < settings.norm_history_min:
        return None
    median = statistics.median(history)
    if norm > settings.norm_bound * median:
        return (
            f"update norm {norm:.4g} exceeds {settings.norm_bound:g} x the median norm {median:.4g} "
            "of recent accepted contributions; check the learning rate and data"
        )
    return None


def probe_verdict(base_loss: float, candidate_loss: float, settings: ValidationSettings) -> str | None:
    """A rejection reason when applying the candidate makes probe loss worse beyond tolerance."""
    limit = base_loss * (1 + settings.probe_tolerance)
    if not candidate_loss <= limit:  # also rejects NaN
        return (
            f"quality probe: held-out loss {candidate_loss:.4f} with this update, "
            f"{base_loss:.4f} without (tolerance {settings.probe_tolerance:.0%})"
        )
    return None
