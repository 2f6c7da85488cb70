"""Robust aggregation: what the hub does when some contributions may be wrong or hostile.

- ``mean``: token-weighted mean (the DiLoCo default);
- ``trimmed_mean``: per coordinate, drop the ``trim_fraction`` largest and smallest values, then
  average the rest (unweighted);
- ``median``: per coordinate median (the mean of the two middle values for an even count).
Any method can first clip every contribution to ``clip_multiple`` times the median norm of the
round, which bounds what one contribution can move, and drop contributions whose direction
disagrees with the round: cosine similarity to the coordinate-wise median of the other
contributions below ``min_cosine``
(random noise is near 0, a sign flip negative, honest updates of one model clearly positive).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from tessera.core.aggregation import weighted_mean
from tessera.core.tensors import TensorDict, global_norm
from tessera.errors import ConfigError

Method = Literal["mean", "trimmed_mean", "median"]
Weighted = tuple[TensorDict, float]


def clip_to_norm(tensors: TensorDict, max_norm: float) -> TensorDict:
    """Scale down to ``max_norm`` (L2 over all tensors) if larger; otherwise unchanged."""
    norm = global_norm(tensors)
    if norm <= max_norm or norm == 0:
        return tensors
    scale = max_norm / norm
    return {name: t * scale for name, t in tensors.items()}


def _stacked(items: Sequence[TensorDict], name: str) -> torch.Tensor:
    return torch.stack([item[name].to(torch.float64) for item in items])


def trimmed_mean(items: Sequence[TensorDict], trim_fraction: float) -> TensorDict:
    """Coordinate-wise mean after dropping ``floor(trim_fraction * n)`` values at each end."""
    n = len(items)
    k = math.floor(trim_fraction * n)
    if n - 2 * k < 1:
        raise ValueError(f"trimming {k} from each end of {n} contributions leaves none")
    dtype = items[0][next(iter(items[0]))].dtype
    out: TensorDict = {}
    for name in items[0]:
        ordered = _stacked(items, name).sort(dim=0).values
        out[name] = ordered[k : n - k].mean(dim=0).to(dtype)
    return out


def coordinate_median(items: Sequence[TensorDict]) -> TensorDict:
    """Coordinate-wise median; the mean of the two middle values when the count is even."""
    n = len(items)
    if n == 0:
        raise ValueError("no contributions to take the median of")
    dtype = items[0][next(iter(items[0]))].dtype
    out: TensorDict = {}
    for name in items[0]:
        ordered = _stacked(items, name).sort(dim=0).values
        middle = ordered[(n - 1) // 2 : n // 2 + 1]
        out[name] = middle.mean(dim=0).to(dtype)
    return out


@dataclass(frozen=True)
class AggregationSettings:
    method: Method = "mean"
    trim_fraction: float = 0.25
    clip_multiple: float = 0.0  # 0: no clipping; else clip to this multiple of the median norm
    min_cosine: float | None = None  # None: off; else drop contributions less aligned with the median
    min_cosine_count: int = 3  # the direction check needs at least this many contributions

    def __post_init__(self) -> None:
        if self.method not in ("mean", "trimmed_mean", "median"):
            raise ConfigError(
                f"aggregation.method {self.method!r} unknown: use 'mean', 'trimmed_mean' or 'median'"
            )
        if not 0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"aggregation.trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise ConfigError(f"aggregation.min_cosine must be in [-1, 1], got {self.min_cosine}")
        if self.clip_multiple < 0:
            raise ConfigError(f"aggregation.clip_multiple cannot be negative, got {self.clip_multiple}")
        if not 1 <= self.min_cosine_count <= 10_000:
            raise ConfigError(
                f"aggregation.min_cosine_count must be from 1 to 10000, got {self.min_cosine_count}"
            )

    @property
    def streaming(self) -> bool:
        """True when contributions can be averaged one at a time (constant memory)."""
        return self.method == "mean" and self.clip_multiple == 0 and self.min_cosine is None


@dataclass(frozen=True)
class Aggregate:
    delta: TensorDict
    clipped: int  # how many contributions were scaled down
    dropped: dict[int, float] = field(default_factory=dict)  # index -> cosine, for misaligned ones


def cosine(a: TensorDict, b: TensorDict) -> float:
    dot = sum(float((a[k].double() * b[k].double()).sum()) for k in a)
    denominator = global_norm(a) * global_norm(b)
    return dot / denominator if denominator > 0 else 0.0


def misaligned(items: Sequence[Weighted], min_cosine: float) -> dict[int, float]:
    """Indices (with their cosine) of contributions pointing away from the coordinate-wise median
    of the others (leaving each one out, so that it cannot pull the reference towards itself)."""
    tensors = [t for t, _ in items]
    cosines = {i: cosine(t, coordinate_median(tensors[:i] + tensors[i + 1 :])) for i, t in enumerate(tensors)}
    return {i: c for i, c in cosines.items() if c < min_cosine}


def aggregate(items: Sequence[Weighted], settings: AggregationSettings) -> Aggregate:
    """Combine weighted contributions with the configured (robust) method."""
    if not items:
        raise ValueError("no contributions to aggregate")
    clipped, dropped = 0, {}
    if settings.min_cosine is not None and len(items) >= settings.min_cosine_count:
        dropped = misaligned(items, settings.min_cosine)
        items = [item for i, item in enumerate(items) if i not in dropped]
        if not items:
            raise ValueError("every contribution was dropped by the direction check")
    if settings.clip_multiple > 0:
        limit = settings.clip_multiple * statistics.median(global_norm(t) for t, _ in items)
        clipped = sum(global_norm(t) > limit for t, _ in items)
        items = [(clip_to_norm(t, limit), w) for t, w in items]
    if settings.method == "trimmed_mean":
        delta = trimmed_mean([t for t, _ in items], settings.trim_fraction)
    elif settings.method == "median":
        delta = coordinate_median([t for t, _ in items])
    else:
        delta = weighted_mean(items)
    return Aggregate(delta, clipped, dropped)
