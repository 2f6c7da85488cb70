"""Merging modules trained from one base: weighted average, task arithmetic and TIES.

Every input is a dict of float tensors with the same names and shapes as ``base`` (the version
all inputs started from). A task vector is ``input - base``.

- ``average``: sum_i w_i input_i / sum_i w_i.
- ``task_arithmetic``: base + scale * sum_i w_i (input_i - base) (Ilharco et al., 2023).
- ``ties``: per (weighted) task vector keep the ``density`` fraction of largest magnitudes (trim), elect
  each coordinate's sign by the sign of the summed trimmed vectors, average only the values
  that agree with it (disjoint mean), and add ``scale`` times that to the base
  (Yadav et al., 2023).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from tessera.core.tensors import TensorDict
from tessera.errors import ConfigError

METHODS = ("average", "task_arithmetic", "ties")


@dataclass(frozen=True)
class MergeSettings:
    method: str = "ties"
    weights: tuple[float, ...] = ()  # one per input; empty: equal
    scale: float = 1.0  # task arithmetic and TIES: how much of the merged task vector to add
    density: float = 0.2  # TIES: fraction of each task vector kept

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"merge method {self.method!r} unknown: use one of {list(METHODS)}")
        if any(w < 0 or not math.isfinite(w) for w in self.weights) or (
            self.weights and sum(self.weights) <= 0
        ):
            raise ConfigError("merge weights must be finite, non-negative and not all zero")
        if not 0 < self.density <= 1:
            raise ConfigError(f"merge density must be in (0, 1], got {self.density}")
        if not math.isfinite(self.scale):
            raise ConfigError("merge scale must be finite")


def merge(
    base: Mapping[str, torch.Tensor], inputs: Sequence[Mapping[str, torch.Tensor]], settings: MergeSettings
) -> TensorDict:
    """The merged tensors (names and shapes of ``base``)."""
    if not inputs:
        raise ConfigError("a merge needs at least one input")
    if settings.weights and len(settings.weights) != len(inputs):
        raise ConfigError(f"{len(settings.weights)} merge weights for {len(inputs)} inputs")
    weights = settings.weights or (1.0,) * len(inputs)
    return {
        name: merge_one(b.float(), [x[name].float() for x in inputs], weights, settings)
        for name, b in base.items()
    }


def merge_one(
    base: torch.Tensor, values: Sequence[torch.Tensor], weights: Sequence[float], settings: MergeSettings
) -> torch.Tensor:
    if settings.method == "average":
        return sum((w * v for w, v in zip(weights, values, strict=True)), torch.zeros_like(base)) / sum(
            weights
        )
    tasks = [w * (v - base) for w, v in zip(weights, values, strict=True)]
    if settings.method == "task_arithmetic":
        return base + settings.scale * sum(tasks, torch.zeros_like(base))
    return base + settings.scale * ties(tasks, settings.density)


def ties(tasks: Sequence[torch.Tensor], density: float) -> torch.Tensor:
    """Trim each task vector to its largest ``density`` share, elect signs, disjoint mean."""
    trimmed = torch.stack([trim(t, density) for t in tasks])
    sign = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(dim=0).clamp(min=1)
    return (trimmed * agree).sum(dim=0) / count


def trim(task: torch.Tensor, density: float) -> torch.Tensor:
    flat = task.reshape(-1)
    k = max(1, math.ceil(density * flat.numel()))
    if k >= flat.numel():
        return task.clone()
    threshold = flat.abs().kthvalue(flat.numel() - k + 1).values
    return torch.where(task.abs() >= threshold, task, torch.zeros_like(task))


def align(target: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], what: str) -> TensorDict:
    """``other``'s tensors under ``target``'s names, paired in name order (modules of one
    structure, such as two experts, differ only in their own name); ConfigError otherwise."""
    mine, theirs = sorted(target), sorted(other)
    if len(mine) != len(theirs) or any(
        target[a].shape != other[b].shape for a, b in zip(mine, theirs, strict=True)
    ):
        raise ConfigError(f"{what} does not have the target's structure (tensor count and shapes)")
    return {a: other[b] for a, b in zip(mine, theirs, strict=True)}
