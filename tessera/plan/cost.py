"""The cost model: the standard formulas the planner and the simulator are built from.

Times in seconds, sizes in bytes, bandwidth in bytes per second. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tessera.errors import ConfigError


def transfer_s(nbytes: float, bytes_per_s: float, latency_s: float) -> float:
    """One message over one link: latency plus serialization."""
    return latency_s + nbytes / bytes_per_s


def ring_allreduce_s(nbytes: float, n: int, bytes_per_s: float, latency_s: float) -> float:
    """Ring all-reduce of ``nbytes`` over ``n`` peers: 2(n-1)/n * S/B + 2(n-1) * latency."""
    if n < 1:
        raise ValueError(f"an all-reduce needs at least one peer, got {n}")
    return 2 * (n - 1) / n * nbytes / bytes_per_s + 2 * (n - 1) * latency_s


def diloco_round_s(inner_steps: int, step_s: float, sync_s: float) -> float:
    """One DiLoCo round without overlap: H steps of compute, then the synchronization."""
    return inner_steps * step_s + sync_s


def diloco_utilization(inner_steps: int, step_s: float, sync_s: float) -> float:
    """Share of a round spent computing: H t_step / (H t_step + T_sync)."""
    compute = inner_steps * step_s
    return compute / (compute + sync_s)


def min_inner_steps(target: float, step_s: float, sync_s: float) -> int:
    """The smallest H with H t / (H t + T_sync) >= target, i.e. H >= target/(1-target) * T_sync/t."""
    if not 0 < target < 1:
        raise ConfigError(f"target utilization must be in (0, 1), got {target}")
    exact = target / (1 - target) * sync_s / step_s
    steps = max(1, math.ceil(exact - 1e-9))
    return steps


def bytes_per_hour(bytes_per_round: float, round_s: float) -> float:
    return bytes_per_round * 3600.0 / round_s


def step_s(flops_per_step: float, device_flops: float, efficiency: float) -> float:
    """Time of one training step on a device reaching ``efficiency`` of its matmul FLOP/s."""
    return flops_per_step / (device_flops * efficiency)


@dataclass(frozen=True)
class MemoryPerParameter:
    """Bytes held per trainable parameter while training."""

    weights: float
    gradients: float
    optimizer: float
    outer: float  # DiLoCo's copy of the base version (0 when training synchronously)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.outer


OPTIMIZER_STATE_BYTES = {"adamw": 8.0, "sgd_momentum": 4.0, "sgd": 0.0}  # fp32 states


def memory_per_parameter(
    optimizer: str = "adamw", mixed_precision: bool = False, diloco: bool = True
) -> MemoryPerParameter:
    """fp32: 4 weights + 4 gradients + AdamW's m and v (8) = 16 bytes; mixed precision keeps bf16
    weights and gradients plus an fp32 master copy (2 + 2 + 4); DiLoCo adds a 4-byte base copy."""
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ConfigError(f"optimizer {optimizer!r} unknown: use one of {sorted(OPTIMIZER_STATE_BYTES)}")
    state = OPTIMIZER_STATE_BYTES[optimizer] + (4.0 if mixed_precision else 0.0)
    width = 2.0 if mixed_precision else 4.0
    return MemoryPerParameter(width, width, state, 4.0 if diloco else 0.0)
