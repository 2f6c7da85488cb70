"""Validation before aggregation: decisions on numbers the hub measured, no I/O here.

- size bound (always on): a contribution whose L2 norm exceeds ``max_relative_norm`` times the
  size of the version it is based on, max(norm of the version, 0.1 x sqrt of its element count),
  is
  rejected (an honest update of H steps is a fraction of the model: 0.6 in the reference LM's
  first round of 100 steps, 0.35 later); so is one that is not finite in float64;
- norm bound (on by default, ``norm_bound = 10``): a contribution whose L2 norm exceeds
  ``norm_bound`` times the median norm of the contributions accepted in this and the previous
  round is rejected (needs at least ``norm_history_min`` of them to judge; 0 turns it off);
- quality probe: the hub applies the candidate to its base version with the share it would
  have in the round's average (``base - delta / min_quorum``) and measures held-out loss on a few
  probe batches; a candidate worse than the base by more than ``probe_tolerance`` (relative)
  is rejected. (Applied whole, an honest update trained on one domain can look worse on the
  mixed held-out data than it is as part of the average.)
- gain against a replay (``replay_gain``): how much of the loss the hub's own replay of a lease
  took off the lease's batches the upload took off them too (tessera.hub.verify).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tessera.errors import ConfigError


@dataclass(frozen=True)
class ValidationSettings:
    norm_bound: float = 10.0  # x the median of recent accepted norms; 0: off
    norm_history_min: int = 3
    max_relative_norm: float = 10.0  # x the size of the base version
    probe: bool = False
    probe_tolerance: float = 0.1
    probe_batches: int = 2

    def __post_init__(self) -> None:
        if self.norm_bound < 0:
            raise ConfigError(
                f"validation.norm_bound cannot be negative (0 turns it off), got {self.norm_bound}"
            )
        if not 0 < self.max_relative_norm <= 1e6:
            raise ConfigError(
                f"validation.max_relative_norm must be positive (at most 1e6), got {self.max_relative_norm}"
            )
        if not 1 <= self.norm_history_min <= 10_000:
            raise ConfigError(
                f"validation.norm_history_min must be from 1 to 10000, got {self.norm_history_min}"
            )
        if self.probe_tolerance < 0:
            raise ConfigError(f"validation.probe_tolerance cannot be negative, got {self.probe_tolerance}")
        if not 1 <= self.probe_batches <= 64:
            raise ConfigError(f"validation.probe_batches must be from 1 to 64, got {self.probe_batches}")


SIZE_FLOOR_RMS = 0.1


def size_verdict(norm: float, base_size: float, settings: ValidationSettings) -> str | None:
    """A rejection reason when the update is not finite or outsized against its base version."""
    limit = settings.max_relative_norm * base_size
    if not norm <= limit:  # also rejects NaN and Inf
        return (
            f"update norm {norm:.4g} exceeds {settings.max_relative_norm:g} x the size {base_size:.4g} of "
            "the version it is based on (validation.max_relative_norm); check the learning rate and data"
        )
    return None


def base_size(norm: float, count: int) -> float:
    """The size an update is measured against: the version's norm, at least an RMS of 0.1 per
    element (so a module that starts at zero can still move)."""
    return max(norm, SIZE_FLOOR_RMS * math.sqrt(count))


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


def replay_gain(base_loss: float, upload_loss: float, replay_loss: float) -> float | None:
    """The part of the replay's gain on the lease's batches that the upload achieved too:
    (base - upload) / (base - replay) of their losses, about 1 for honest work, at most 0 for
    an update that does not train on that data (NaN loss counts as none); None when the replay
    itself gained nothing, so the data cannot tell."""
    replay = base_loss - replay_loss
    if not replay > 1e-6 * max(abs(base_loss), 1.0):
        return None
    upload = base_loss - upload_loss
    return upload / replay if math.isfinite(upload) else -math.inf
