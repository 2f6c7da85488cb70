"""Helpers on named tensor collections and their safetensors encoding."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from tessera.errors import MalformedContribution

TensorDict = dict[str, torch.Tensor]


def clone_tensors(tensors: Mapping[str, torch.Tensor]) -> TensorDict:
    """Detached, contiguous CPU copies (safe to keep while the source keeps changing)."""
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


def to_bytes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Encode as safetensors (the only format tensors travel and rest in)."""
    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    return st_save(contiguous, metadata=metadata)


def from_bytes(data: bytes) -> TensorDict:
    """Decode safetensors bytes; anything else raises MalformedContribution."""
    try:
        return dict(st_load(data))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise MalformedContribution(
            f"body is not a valid safetensors file ({exc}); "
            "encode the contribution with safetensors.torch.save"
        ) from exc


def nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Raw size of the tensors' data in bytes."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def global_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """L2 norm over all tensors taken together."""
    total = sum(float(t.double().pow(2).sum()) for t in tensors.values())
    return math.sqrt(total)


def check_compatible(candidate: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> None:
    """Raise MalformedContribution unless names, shapes and dtypes match and values are finite."""
    missing = sorted(set(reference) - set(candidate))
    extra = sorted(set(candidate) - set(reference))
    if missing or extra:
        raise MalformedContribution(
            f"tensor names do not match the version: missing {missing[:5]}, unexpected {extra[:5]}; "
            "send one tensor per parameter of the leased version"
        )
    for name, ref in reference.items():
        got = candidate[name]
        if got.shape != ref.shape:
            raise MalformedContribution(
                f"tensor {name!r} has shape {list(got.shape)}, expected {list(ref.shape)}"
            )
        if got.dtype != ref.dtype:
            raise MalformedContribution(f"tensor {name!r} has dtype {got.dtype}, expected {ref.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise MalformedContribution(f"tensor {name!r} contains NaN or Inf; check the training loss")


def float_tensors(tensors: Mapping[str, torch.Tensor]) -> TensorDict:
    """The floating-point entries: what pseudo-gradients and contributions cover."""
    return {name: t for name, t in tensors.items() if t.is_floating_point()}


def model_float_tensors(model: torch.nn.Module) -> TensorDict:
    return clone_tensors(float_tensors(model.state_dict()))
