"""Codecs: round-trip error bounds, wire sizes equal to the planner's, error feedback, bad payloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.core.codecs import ErrorFeedback, apply_change, codec, pack, publish, unpack
from tessera.core.tensors import from_bytes, model_float_tensors, to_bytes
from tessera.errors import ConfigError, ContributionRejected, MalformedContribution
from tessera.plan.profile import WIRE_FORMATS
from tessera.testing.cluster import run_loops
from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSettings, WorkerSummary
from tests.helpers import join, meta, reading, tiny_recipe, work, zero_update

NAMES = ["fp32", "bf16", "fp16", "int8", "int4", "int3", "int2", "sign", "topk1"]


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


@pytest.mark.parametrize(
    "name, block, half", [("int8", 256, 127), ("int4", 64, 7), ("int3", 256, 3), ("int2", 64, 1.5)]
)
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
        if name == "int3":  # the scale travels as bf16 (8 bits of mantissa): 3 levels x 2^-9 more
            bound = bound * (1 + 6 * 2**-9)
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


def test_sign_sends_each_values_sign_times_its_blocks_mean_magnitude() -> None:
    t = update()
    out = round_trip("sign", t)
    flat, sent = t["w"].reshape(-1), out["w"].reshape(-1)
    for start in (0, 256 * 40, 20992):  # two whole blocks and the last, partial one (8 values)
        block, got = flat[start : start + 256], sent[start : start + 256]
        scale = torch.tensor(block.abs().mean().item()).to(torch.bfloat16).float()
        assert torch.equal(got, torch.where(block >= 0, scale, -scale))
    assert out["one"].item() == pytest.approx(0.5, rel=2**-8)  # one value: its own magnitude
    assert torch.equal(out["zero"], t["zero"])


@pytest.mark.parametrize("name", ["int8", "int4", "int3", "int2", "sign", "topk1", "bf16"])
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
    for bits in (1, 2, 3, 4, 8):
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


# --- through the hub ------------------------------------------------------------------------


def codec_run(admin: HubClient, corpus_dir: Path, name: str, rounds: int = 2) -> str:
    extra = f'\n[communication]\ncodec = "{name}"\n'
    return admin.create_run(tiny_recipe(corpus_dir, rounds=rounds, quorum=2, extra=extra)).run_id


@pytest.mark.parametrize("name", ["int8", "topk10"])
def test_workers_send_encoded_contributions_and_the_run_learns(
    http: TestClient, admin: HubClient, corpus_dir: Path, tmp_path: Path, name: str
) -> None:
    run_id = codec_run(admin, corpus_dir, name, rounds=3)
    clients = [
        HubClient(http, admin.create_provider(f"{name}-{i}").token, retry_s=0, run_id=run_id)
        for i in range(2)
    ]
    loops = [
        WorkLoop(c, WorkerSettings(tmp_path / f"w{i}", name=f"w{i}", wait_s=5, trust=reading(corpus_dir)))
        for i, c in enumerate(clients)
    ]
    assert not run_loops(loops)
    rounds = admin.rounds(run_id)
    assert [r.accepted for r in rounds] == [2, 2, 2]
    fp32 = len(to_bytes(model_float_tensors(loops[0].session.model)))
    assert all(r.bytes_in < 0.6 * 2 * fp32 for r in rounds)  # int8 ~1/4, top-10% ~0.15 of fp32
    assert rounds[-1].val_loss is not None and rounds[-1].val_loss < admin.status(run_id).initial_val_loss
    assert loops[0].session.feedback.residual is not None  # error feedback kept what was not sent


def test_hub_refuses_a_payload_in_another_codec(http: TestClient, admin: HubClient, corpus_dir: Path) -> None:
    run_id = codec_run(admin, corpus_dir, "int8")
    client, worker_id = join(http, admin, run_id, "w")
    grant = work(client, worker_id)
    delta = zero_update(client, grant)
    before = admin.contributions(run_id)
    with pytest.raises(ContributionRejected, match="this run's codec is 'int8'"):
        client.submit(meta(grant, worker_id), to_bytes(delta))  # fp32 body, fp32 declared
    wrong = meta(grant, worker_id).model_copy(update={"codec": "int8"})
    with pytest.raises(ContributionRejected, match="int8 payload: tensor names do not match"):
        client.submit(wrong, to_bytes(delta))  # fp32 body declared int8
    assert admin.contributions(run_id) == before
    good = client.submit(wrong, to_bytes(codec("int8").encode(delta)))
    assert good.status == "accepted"


# --- version changes ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fp32", "int8", "int4", "sign"])
def test_published_version_is_rebuilt_exactly_from_the_change(name: str) -> None:
    old = {**update(1), "step": torch.tensor([3])}  # an integer buffer travels unchanged
    residual = None
    for seed in range(3):
        new = {k: (v + update(seed + 10)[k] if v.is_floating_point() else v) for k, v in old.items()}
        published = publish(old, new, codec(name), residual)
        wire = from_bytes(to_bytes(published.change))
        shapes = {k: v.shape for k, v in old.items() if v.is_floating_point()}
        rebuilt = apply_change(old, codec(name).decode(wire, shapes))
        assert to_bytes(rebuilt) == to_bytes(published.tensors)  # bit for bit
        assert torch.equal(published.tensors["step"], old["step"])
        # what was left out stays with the hub for the next change: nothing is lost
        for k in shapes:
            before = residual[k] if residual else 0.0
            assert torch.allclose(published.tensors[k] + published.residual[k], new[k] + before, atol=1e-5)
        old, residual = published.tensors, published.residual


def test_workers_rebuild_versions_from_compressed_changes(
    http: TestClient, admin: HubClient, corpus_dir: Path, tmp_path: Path
) -> None:
    extra = '\n[communication]\ncodec = "int8"\ndownload_codec = "int8"\n'
    run_id = admin.create_run(tiny_recipe(corpus_dir, rounds=4, quorum=2, extra=extra)).run_id
    clients = [
        HubClient(http, admin.create_provider(f"dl-{i}").token, retry_s=0, run_id=run_id) for i in range(2)
    ]
    loops = [
        WorkLoop(c, WorkerSettings(tmp_path / f"w{i}", name=f"w{i}", wait_s=5, trust=reading(corpus_dir)))
        for i, c in enumerate(clients)
    ]
    assert not run_loops(loops)
    versions = [admin.version(run_id, n) for n in range(5)]
    assert versions[0].change_sha256 is None
    assert all(v.change_nbytes is not None and v.change_nbytes < 0.4 * v.nbytes for v in versions[1:])
    # each worker built version 0 itself (same seed, same bytes), then downloaded only changes
    for loop, client in zip(loops, clients, strict=True):
        assert (
            loop.session.held is not None
            and loop.session.held.number == 3
            and loop.session.held.sha == versions[3].blob_sha256
        )
        assert client.bytes_down == sum(v.change_nbytes or 0 for v in versions[1:4])
        assert (
            len(list((loop.session.settings.state_dir / "blobs").glob("*/*"))) == 1
        )  # only the newest is kept
    rounds = admin.rounds(run_id)
    assert rounds[-1].val_loss is not None and rounds[-1].val_loss < admin.status(run_id).initial_val_loss


# --- overlapped rounds ----------------------------------------------------------------------


def test_overlapped_workers_train_on_while_rounds_travel(
    http: TestClient, admin: HubClient, corpus_dir: Path, tmp_path: Path
) -> None:
    extra = '\n[communication]\ncodec = "int8"\ndownload_codec = "int8"\noverlap = true\n'
    run_id = admin.create_run(tiny_recipe(corpus_dir, rounds=4, quorum=2, inner_steps=4, extra=extra)).run_id
    clients = [
        HubClient(http, admin.create_provider(f"ov-{i}").token, retry_s=0, run_id=run_id) for i in range(2)
    ]
    loops = [
        WorkLoop(c, WorkerSettings(tmp_path / f"w{i}", name=f"w{i}", wait_s=5, trust=reading(corpus_dir)))
        for i, c in enumerate(clients)
    ]
    summaries: list[WorkerSummary] = []
    assert not run_loops(loops, on_done=summaries.append)
    rounds = admin.rounds(run_id)
    assert len(rounds) == 4 and all(r.accepted == 2 for r in rounds)
    assert rounds[-1].val_loss is not None and rounds[-1].val_loss < admin.status(run_id).initial_val_loss
    for loop in loops:
        assert loop.overlapped is not None
        shifts = loop.overlapped.shifts
        # each published version was applied once, in order, with the progress made meanwhile kept
        assert [s.version_number for s in shifts] == [1, 2, 3]
        assert max(s.drift for s in shifts) < 1e-5
        assert loop.session.held is not None and loop.session.held.sha == admin.version(run_id, 3).blob_sha256
    contributions = admin.contributions(run_id)
    assert all(c.tokens >= 4 * 4 * 16 for c in contributions)  # at least H steps of batch 4 x 16
    assert all(0 < s.utilization <= 1 and s.compute_s > 0 for s in summaries)
