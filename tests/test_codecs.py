"""Codecs: round-trip error bounds, wire sizes equal to the planner's, error feedback, bad payloads."""

from __future__ import annotations

import pytest
import torch

from tessera.core.codecs import ErrorFeedback, codec, pack, unpack
from tessera.core.tensors import from_bytes, to_bytes
from tessera.errors import ConfigError, MalformedContribution
from tessera.plan.profile import WIRE_FORMATS

NAMES = ["fp32", "bf16", "fp16", "int8", "int4", "int2", "topk1"]


def update(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(300, 70, generator=g) * 0.01,
        "b": torch.randn(13, generator=g),
        "one": torch.tensor([0.5]),
        "zero": torch.zeros(64),
    }


def shapes(t: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in t.items()}


def round_trip(name: str, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    c = codec(name)
    wire = from_bytes(to_bytes(c.encode(t)))  # through safetensors, as on the network
    return c.decode(wire, shapes(t))


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_shapes_and_wire_size(name: str) -> None:
    t = update()
    out = round_trip(name, t)
    assert shapes(out) == shapes(t) and all(v.dtype == torch.float32 for v in out.values())
    wire = codec(name).encode(t)
    nbytes = sum(v.numel() * v.element_size() for v in wire.values())
    assert nbytes == sum(WIRE_FORMATS[name].nbytes(v.numel()) for v in t.values())


def test_lossless_and_cast_bounds() -> None:
    t = update()
    assert all(torch.equal(round_trip("fp32", t)[k], t[k]) for k in t)
    for name, rel in (("bf16", 2**-8), ("fp16", 2**-11)):
        out = round_trip(name, t)
        for k in t:
            assert torch.all((out[k] - t[k]).abs() <= rel * t[k].abs() + 1e-7), (name, k)


@pytest.mark.parametrize("name, block, half", [("int8", 256, 127), ("int4", 64, 7), ("int2", 64, 1.5)])
def test_blockwise_quantization_error_is_at_most_half_a_step(name: str, block: int, half: float) -> None:
    t = update()
    out = round_trip(name, t)
    for k, v in t.items():
        flat = v.reshape(-1)
        pad = (-flat.numel()) % block
        grid = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, block)
        step = grid.abs().amax(dim=1) / half  # one quantization step per block
        bound = (step / 2).repeat_interleave(block)[: flat.numel()] + 1e-7
        if name == "int2":  # four levels at +-0.5, +-1.5 steps: zero is half a step from the nearest
            bound = bound * 1.0001
        assert torch.all((out[k].reshape(-1) - flat).abs() <= bound), k
    assert torch.equal(out["zero"], t["zero"])


def test_topk_keeps_the_largest_values() -> None:
    t = update()
    out = round_trip("topk1", t)
    w, kept = t["w"].reshape(-1), out["w"].reshape(-1)
    k = int((kept != 0).sum())
    assert k == 210  # 1% of 21000
    threshold = w.abs().topk(k).values.min()
    assert torch.all(w[kept != 0].abs() >= threshold)
    assert torch.allclose(kept[kept != 0], w[kept != 0], rtol=2**-10)
    assert out["one"].item() == pytest.approx(0.5)  # at least one value per tensor


@pytest.mark.parametrize("name", ["int8", "int4", "int2", "topk1", "bf16"])
def test_error_feedback_sends_everything_over_time(name: str) -> None:
    """Sum of what was sent plus the residual equals the sum of the true updates, every round."""
    feedback = ErrorFeedback(codec(name))
    true_sum = {k: torch.zeros_like(v) for k, v in update().items()}
    sent_sum = {k: torch.zeros_like(v) for k, v in update().items()}
    for seed in range(20):
        u = update(seed)
        _, sent = feedback.encode(u)
        for k in u:
            true_sum[k] += u[k]
            sent_sum[k] += sent[k]
        assert feedback.residual is not None
        for k in u:
            assert torch.allclose(sent_sum[k] + feedback.residual[k], true_sum[k], atol=1e-5)


def test_pack_unpack_round_trip() -> None:
    for bits in (2, 4, 8):
        codes = torch.randint(0, 2**bits, (1001,), dtype=torch.uint8)
        assert torch.equal(unpack(pack(codes, bits), bits, 1001), codes)


def test_unknown_codec_and_bad_payloads() -> None:
    with pytest.raises(ConfigError, match="codec 'zip' unknown"):
        codec("zip")
    with pytest.raises(ConfigError, match="fraction"):
        codec("topk200")
    t = update()
    c = codec("int8")
    wire = c.encode(t)
    with pytest.raises(MalformedContribution, match="missing"):
        c.decode({k: v for k, v in wire.items() if k != "w.q"}, shapes(t))
    bad = dict(wire, **{"w.scale": torch.full_like(wire["w.scale"], float("inf"))})
    with pytest.raises(MalformedContribution, match="not finite"):
        c.decode(bad, shapes(t))
    top = codec("topk1")
    wire = top.encode(t)
    wire["w.idx"] = wire["w.idx"] + 10**6
    with pytest.raises(MalformedContribution, match="indices below"):
        top.decode(wire, shapes(t))
    with pytest.raises(MalformedContribution, match="fp16 values"):
        top.decode(dict(top.encode(t), **{"b.val": torch.zeros(1)}), shapes(t))
