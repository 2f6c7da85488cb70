"""Outer optimizers: how the hub turns the averaged pseudo-gradient into a new version.

- ``nesterov``: SGD with Nesterov momentum as in DiLoCo (lr 0.7, momentum 0.9), with the
  update rule of ``torch.optim.SGD(nesterov=True)``:
  ``m <- mu * m + g``; ``theta <- theta - lr * (g + mu * m)``.
- ``average``: plain averaging (FedAvg), ``theta <- theta - g``: the new version is the
  weighted mean of the workers' parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from tessera.core.tensors import TensorDict
from tessera.errors import ConfigError

OuterKind = Literal["nesterov", "average"]


@dataclass(frozen=True)
class OuterSettings:
    kind: OuterKind = "nesterov"
    lr: float = 0.7
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.kind not in ("nesterov", "average"):
            raise ConfigError(f"outer optimizer {self.kind!r} unknown: use 'nesterov' or 'average'")
        if self.lr <= 0:
            raise ConfigError(f"outer lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"outer momentum must be in [0, 1), got {self.momentum}")


class OuterOptimizer(Protocol):
    def step(
        self,
        params: Mapping[str, torch.Tensor],
        grad: Mapping[str, torch.Tensor],
        state: Mapping[str, torch.Tensor],
    ) -> tuple[TensorDict, TensorDict]:
        """Return (new params, new optimizer state); inputs are left untouched."""
        ...


class NesterovSGD:
    def __init__(self, lr: float, momentum: float) -> None:
        self.lr = lr
        self.momentum = momentum

    def step(
        self,
        params: Mapping[str, torch.Tensor],
        grad: Mapping[str, torch.Tensor],
        state: Mapping[str, torch.Tensor],
    ) -> tuple[TensorDict, TensorDict]:
        new_params: TensorDict = {}
        new_state: TensorDict = {}
        for name, p in params.items():
            g = grad.get(name)
            if g is None:
                new_params[name] = p.clone()
                continue
            prev = state.get(name)
            buf = g.clone() if prev is None else self.momentum * prev + g
            new_state[name] = buf
            new_params[name] = p - self.lr * (g + self.momentum * buf)
        return new_params, new_state


class Averaging:
    def step(
        self,
        params: Mapping[str, torch.Tensor],
        grad: Mapping[str, torch.Tensor],
        state: Mapping[str, torch.Tensor],
    ) -> tuple[TensorDict, TensorDict]:
        new_params = {name: (p - grad[name]) if name in grad else p.clone() for name, p in params.items()}
        return new_params, {}


def outer_optimizer(settings: OuterSettings) -> OuterOptimizer:
    if settings.kind == "average":
        return Averaging()
    return NesterovSGD(settings.lr, settings.momentum)
