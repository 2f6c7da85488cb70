"""Pseudo-gradients: the change a worker made to the global parameters.

DiLoCo calls ``global - local`` the outer gradient: following it downhill (subtracting it)
moves the global parameters towards the worker's locally trained ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from tessera.core.tensors import TensorDict


def pseudo_gradient(
    global_params: Mapping[str, torch.Tensor], local_params: Mapping[str, torch.Tensor]
) -> TensorDict:
    """``global - local`` for every floating-point tensor of the global parameters."""
    return {
        name: (g.detach() - local_params[name].detach().to(g.dtype)).contiguous()
        for name, g in global_params.items()
        if g.is_floating_point()
    }


def apply_delta(
    params: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor], scale: float = 1.0
) -> TensorDict:
    """``params - scale * delta`` (tensors missing from ``delta`` are copied unchanged)."""
    out: TensorDict = {}
    for name, p in params.items():
        d = delta.get(name)
        out[name] = p.clone() if d is None else p - scale * d.to(p.dtype)
    return out
