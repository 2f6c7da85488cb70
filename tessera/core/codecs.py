"""Codecs: how a pseudo-gradient or a version change travels. Pure tensor code, no I/O.

A codec turns a dict of float tensors into a dict of wire tensors (safetensors-ready: names
get a suffix, ".q", ".scale", ".idx", ".val") and back, given the original shapes. Sizes match
``tessera.plan.profile.WIRE_FORMATS``, which the planner uses:

- ``fp32``: as is; ``bf16``, ``fp16``: cast.
- ``int8``: blockwise absmax quantization, blocks of 256 values, one fp32 scale per block.
- ``int4``, ``int2``: 4 or 2 bits per value in blocks of 64 with one fp32 scale, packed into
  bytes; int4 uses the 15 levels -7..7, int2 the 4 levels -1.5, -0.5, 0.5, 1.5 (times the scale).
- ``int3``: 3 bits per value (the 7 levels -3..3) in blocks of 256 with one bf16 scale: 3.0625
  bits per value.
- ``sign``: 1 bit per value (its sign) in blocks of 256 with one bf16 scale, the block's mean
  magnitude: 1.0625 bits per value.
- ``topk1``..: the largest 1% (``topk<p>`` for p%) of each tensor by magnitude: int32 indices and
  fp16 values.

Every lossy codec is biased for a single message; ``ErrorFeedback`` keeps what was not sent on
the sender and adds it to the next message, so over rounds everything is sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from tessera.core.tensors import TensorDict
from tessera.errors import ConfigError, MalformedContribution

TOPK = re.compile(r"^topk(\d+(?:\.\d+)?)$")


class Codec:
    """Identity on float32; subclasses encode and decode one tensor."""

    name = "fp32"
    lossless = True

    def encode(self, tensors: Mapping[str, torch.Tensor]) -> TensorDict:
        wire: TensorDict = {}
        for name, tensor in tensors.items():
            for suffix, part in self.encode_one(tensor.detach().float()).items():
                wire[name + suffix] = part
        return wire

    def decode(self, wire: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size]) -> TensorDict:
        """Float32 tensors of ``shapes`` from their wire parts; MalformedContribution if they do not fit."""
        expected = {name + suffix for name in shapes for suffix in self.suffixes}
        if set(wire) != expected:
            missing, extra = sorted(expected - set(wire))[:3], sorted(set(wire) - expected)[:3]
            raise MalformedContribution(
                f"{self.name} payload: tensor names do not match the model: missing {missing}, "
                f"unexpected {extra}"
            )
        out: TensorDict = {}
        for name, shape in shapes.items():
            parts = {suffix: wire[name + suffix] for suffix in self.suffixes}
            out[name] = self.decode_one(parts, shape, name).reshape(shape)
        return out

    suffixes: tuple[str, ...] = ("",)

    def encode_one(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"": tensor.clone()}

    def decode_one(self, parts: dict[str, torch.Tensor], shape: torch.Size, name: str) -> torch.Tensor:
        return plain(parts[""], shape, torch.float32, name)


def check(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise MalformedContribution(f"tensor {name}: expected {what}; encode with the run's codec")


def plain(value: torch.Tensor, shape: torch.Size, dtype: torch.dtype, name: str) -> torch.Tensor:
    """A tensor sent as is: its dtype and shape must be the model's."""
    check(value.dtype == dtype, name, f"dtype {dtype}, got {value.dtype}")
    check(
        value.shape in (shape, (math.prod(shape),)), name, f"shape {tuple(shape)}, got {tuple(value.shape)}"
    )
    return value.float()


class Cast(Codec):
    lossless = False

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype

    def encode_one(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"": tensor.to(self.dtype)}

    def decode_one(self, parts: dict[str, torch.Tensor], shape: torch.Size, name: str) -> torch.Tensor:
        return plain(parts[""], shape, self.dtype, name)


def blocks(flat: torch.Tensor, block: int) -> torch.Tensor:
    """``flat`` zero-padded to whole blocks, shaped (blocks, block)."""
    pad = (-flat.numel()) % block
    return torch.nn.functional.pad(flat, (0, pad)).reshape(-1, block)


class Quantized(Codec):
    """Symmetric blockwise quantization to ``bits`` with one fp32 absmax scale per block."""

    suffixes = (".q", ".scale")
    lossless = False

    def __init__(self, name: str, bits: int, block: int, scale_dtype: torch.dtype = torch.float32) -> None:
        self.name = name
        self.bits = bits
        self.block = block
        self.scale_dtype = scale_dtype
        # the largest level: int8 127 (-127..127), int4 7 (-7..7), int2 1.5 (-1.5, -0.5, 0.5, 1.5)
        self.half = 1.5 if bits == 2 else float(2 ** (bits - 1) - 1)

    def encode_one(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = tensor.reshape(-1)
        grid = blocks(flat, self.block)
        scale = (grid.abs().amax(dim=1) / self.half).to(self.scale_dtype).float()  # as decoded
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        x = grid / safe[:, None]
        if self.bits == 2:  # levels -1.5, -0.5, 0.5, 1.5 -> codes 0..3
            codes = torch.clamp(torch.floor(x + 2.0), 0, 3).to(torch.uint8)
        else:
            codes = (torch.clamp(torch.round(x), -self.half, self.half) + self.half).to(torch.uint8)
        return {
            ".q": pack(codes.reshape(-1)[: flat.numel()], self.bits),
            ".scale": scale.to(self.scale_dtype),
        }

    def decode_one(self, parts: dict[str, torch.Tensor], shape: torch.Size, name: str) -> torch.Tensor:
        numel = math.prod(shape)
        n_blocks = math.ceil(numel / self.block)
        q, scale = parts[".q"], parts[".scale"]
        check(
            scale.dtype == self.scale_dtype and scale.shape == (n_blocks,),
            name,
            f"{n_blocks} {self.scale_dtype} scales",
        )
        size = packed_size(numel, self.bits)
        check(q.dtype == torch.uint8 and q.numel() == size, name, f"{size} bytes of {self.bits}-bit codes")
        codes = blocks(unpack(q, self.bits, numel).float(), self.block)
        values = (codes - (1.5 if self.bits == 2 else self.half)) * scale.float()[:, None]
        if not torch.isfinite(values).all():
            raise MalformedContribution(f"tensor {name}: scales are not finite")
        return values.reshape(-1)[:numel]


class Sign(Codec):
    """One bit per value, its sign, and one bf16 scale per block of 256: the block's mean
    magnitude, the scale that loses the least (in squared error) for a sign."""

    name = "sign"
    suffixes = (".q", ".scale")
    lossless = False
    block = 256

    def encode_one(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = tensor.reshape(-1)
        grid = blocks(flat, self.block)
        counts = torch.full((grid.shape[0],), float(self.block))
        if len(counts):
            counts[-1] = flat.numel() - self.block * (grid.shape[0] - 1)  # the padding is not averaged
        scale = (grid.abs().sum(dim=1) / counts).to(torch.bfloat16)
        return {".q": pack((flat >= 0).to(torch.uint8), 1), ".scale": scale}

    def decode_one(self, parts: dict[str, torch.Tensor], shape: torch.Size, name: str) -> torch.Tensor:
        numel = math.prod(shape)
        n_blocks = math.ceil(numel / self.block)
        q, scale = parts[".q"], parts[".scale"]
        check(scale.dtype == torch.bfloat16 and scale.shape == (n_blocks,), name, f"{n_blocks} bf16 scales")
        size = packed_size(numel, 1)
        check(q.dtype == torch.uint8 and q.numel() == size, name, f"{size} bytes of sign bits")
        signs = blocks(unpack(q, 1, numel).float() * 2 - 1, self.block)
        values = signs * scale.float()[:, None]
        if not torch.isfinite(values).all():
            raise MalformedContribution(f"tensor {name}: scales are not finite")
        return values.reshape(-1)[:numel]


def packed_size(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes below 2**bits, packed little-end first into bytes."""
    if bits == 8:
        return codes.to(torch.uint8)
    if 8 % bits:  # e.g. 3 bits: the codes' bits in one stream, 8 to a byte
        stream = ((codes[:, None] >> torch.arange(bits, dtype=torch.uint8)) & 1).reshape(-1)
        return pack(stream, 1)
    per_byte = 8 // bits
    padded = torch.nn.functional.pad(codes, (0, (-codes.numel()) % per_byte)).reshape(-1, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.uint8) * bits
    return (padded << shifts).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    if bits == 8:
        return packed[:count]
    if 8 % bits:
        stream = unpack(packed, 1, count * bits).reshape(count, bits)
        return (stream << torch.arange(bits, dtype=torch.uint8)).sum(dim=1, dtype=torch.int32).to(torch.uint8)
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.uint8) * bits
    codes = (packed[:, None] >> shifts) & (2**bits - 1)
    return codes.reshape(-1)[:count]


class TopK(Codec):
    """The ``fraction`` of largest-magnitude values of each tensor (at least one), as fp16."""

    suffixes = (".idx", ".val")
    lossless = False

    def __init__(self, name: str, fraction: float) -> None:
        if not 0 < fraction <= 1:
            raise ConfigError(f"codec {name}: the kept fraction must be in (0, 100] percent")
        self.name = name
        self.fraction = fraction

    def encode_one(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = tensor.reshape(-1)
        k = max(1, math.ceil(flat.numel() * self.fraction))
        idx = flat.abs().topk(k, sorted=False).indices.sort().values
        return {".idx": idx.to(torch.int32), ".val": flat[idx].to(torch.float16)}

    def decode_one(self, parts: dict[str, torch.Tensor], shape: torch.Size, name: str) -> torch.Tensor:
        numel = math.prod(shape)
        k = max(1, math.ceil(numel * self.fraction))
        idx, val = parts[".idx"], parts[".val"]
        check(idx.dtype == torch.int32 and idx.shape == (k,), name, f"{k} int32 indices")
        check(val.dtype == torch.float16 and val.shape == (k,), name, f"{k} fp16 values")
        check(bool(((idx >= 0) & (idx < numel)).all()), name, f"indices below {numel}")
        out = torch.zeros(numel)
        out[idx.long()] = val.float()
        return out


def codec(name: str) -> Codec:
    """The codec called ``name``; ConfigError listing the choices otherwise."""
    fixed: dict[str, Codec] = {
        "fp32": Codec(),
        "bf16": Cast("bf16", torch.bfloat16),
        "fp16": Cast("fp16", torch.float16),
        "int8": Quantized("int8", 8, 256),
        "int4": Quantized("int4", 4, 64),
        "int3": Quantized("int3", 3, 256, torch.bfloat16),
        "int2": Quantized("int2", 2, 64),
        "sign": Sign(),
    }
    if name in fixed:
        return fixed[name]
    match = TOPK.match(name)
    if match:
        return TopK(name, float(match.group(1)) / 100)
    raise ConfigError(f"codec {name!r} unknown: use one of {sorted(fixed)} or topk<percent> (e.g. topk1)")


@dataclass
class ErrorFeedback:
    """What a lossy codec left out, kept by the sender and added to its next message."""

    codec: Codec
    residual: TensorDict | None = None

    def encode(self, update: Mapping[str, torch.Tensor]) -> tuple[TensorDict, TensorDict]:
        """Encode ``update`` plus the residual; returns (wire tensors, what the receiver decodes)."""
        total = {
            k: v.detach().float() + (self.residual[k] if self.residual else 0.0) for k, v in update.items()
        }
        wire = self.codec.encode(total)
        sent = self.codec.decode(wire, {k: v.shape for k, v in total.items()})
        self.residual = {k: total[k] - sent[k] for k in total}
        return wire, sent


@dataclass(frozen=True)
class CommunicationSettings:
    """The ``[communication]`` section of a recipe: how contributions travel."""

    codec: str = "fp32"  # contributions, worker to hub
    download_codec: str = "fp32"  # each version's change, hub to worker
    error_feedback: bool = True  # keep what a lossy codec left out and send it next time
    overlap: bool = False  # train on while uploading and downloading (tessera.worker.overlap)

    def __post_init__(self) -> None:
        codec(self.codec)
        codec(self.download_codec)
        if not isinstance(self.overlap, bool):
            raise ConfigError("communication.overlap must be true or false")
        if not isinstance(self.error_feedback, bool):
            raise ConfigError("communication.error_feedback must be true or false")


def apply_change(held: Mapping[str, torch.Tensor], change: Mapping[str, torch.Tensor]) -> TensorDict:
    """``held`` plus a decoded change, float32 addition: the hub and every worker compute the
    same bits, so a worker rebuilds a version exactly from the one before and the change."""
    return {k: held[k] + change[k] if k in change else held[k].clone() for k in held}


@dataclass(frozen=True)
class Published:
    tensors: TensorDict  # the version, as workers will rebuild it
    change: TensorDict  # wire tensors of the change from the previous version
    residual: TensorDict  # what the download codec left out, for the next version


def publish(
    old: Mapping[str, torch.Tensor],
    new: Mapping[str, torch.Tensor],
    download: Codec,
    residual: TensorDict | None,
    error_feedback: bool = True,
) -> Published:
    """The next version as ``old`` plus the encoded change towards ``new`` (plus what earlier
    encodings left out, with error feedback), so that the change alone can travel."""
    update = {k: new[k] - old[k] for k in new if new[k].is_floating_point()}
    feedback = ErrorFeedback(download, residual if error_feedback else None)
    wire, sent = feedback.encode(update)
    assert feedback.residual is not None  # set by encode
    return Published(apply_change(old, sent), wire, feedback.residual if error_feedback else {})
