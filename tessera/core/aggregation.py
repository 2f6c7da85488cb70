"""Combining contributions: token-weighted mean and staleness down-weighting."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from tessera.core.tensors import TensorDict


class WeightedMean:
    """Streaming weighted mean: add contributions one at a time, memory of one accumulator."""

    def __init__(self) -> None:
        self._sum: TensorDict = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, tensors: Mapping[str, torch.Tensor], weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"contribution weight must be positive, got {weight}")
        for name, t in tensors.items():
            term = t.detach().to(torch.float64) * weight
            if name in self._sum:
                self._sum[name] += term
            else:
                self._sum[name] = term
        self.total_weight += weight
        self.count += 1

    def result(self, dtype: torch.dtype = torch.float32) -> TensorDict:
        if self.count == 0:
            raise ValueError("no contributions to average")
        return {name: (s / self.total_weight).to(dtype) for name, s in self._sum.items()}


def weighted_mean(items: Iterable[tuple[Mapping[str, torch.Tensor], float]]) -> TensorDict:
    """Mean of tensor dicts weighted by e.g. tokens: sum(w_i * x_i) / sum(w_i)."""
    acc = WeightedMean()
    for tensors, weight in items:
        acc.add(tensors, weight)
    return acc.result()


def staleness_weight(staleness: int, decay: float) -> float:
    """Down-weighting of a contribution ``staleness`` versions behind: ``decay ** staleness``."""
    if staleness < 0:
        raise ValueError(f"staleness cannot be negative, got {staleness}")
    return float(decay**staleness)
