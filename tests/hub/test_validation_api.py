"""Validation before aggregation and robust aggregation, through the hub's API (both backends)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.core.tensors import from_bytes, to_bytes
from tests.helpers import join, meta, tiny_recipe, work

pytestmark = pytest.mark.timeout(120)
# The aggregation tests send an outlier far larger than the tiny model: validation lets it through,
# so that what is tested is what aggregation does with it.
OUTLIERS_PASS = "[validation]\nmax_relative_norm = 1000.0\n"


def constant_update(client: HubClient, blob_sha: str, value: float) -> dict[str, torch.Tensor]:
    params = from_bytes(client.blob(blob_sha))
    return {k: torch.full_like(v, value) for k, v in params.items() if v.is_floating_point()}


def submit_values(
    http: TestClient, admin: HubClient, run_id: str, values: list[float]
) -> list[tuple[str, str | None]]:
    replies = []
    for i, value in enumerate(values):
        client, wid = join(http, admin, run_id, f"w{i}")
        grant = work(client, wid)
        reply = client.submit(meta(grant, wid), to_bytes(constant_update(client, grant.blob_sha256, value)))
        replies.append((reply.status, reply.reason))
    return replies


def test_norm_bound_rejects_an_outsized_update_with_a_reason(
    http: TestClient, admin: HubClient, corpus_dir: Path
) -> None:
    recipe = tiny_recipe(corpus_dir, quorum=5, extra="[validation]\nnorm_bound = 3.0\nnorm_history_min = 2\n")
    created = admin.create_run(recipe)
    replies = submit_values(http, admin, created.run_id, [0.010, 0.011, 0.012, -0.1])
    assert [r[0] for r in replies] == ["accepted", "accepted", "accepted", "rejected"]
    assert "exceeds 3 x the median norm" in (replies[3][1] or "")
    listed = admin.contributions(created.run_id, 0)
    assert [c.status for c in listed] == ["accepted"] * 3 + ["rejected"]
    assert listed[3].norm > 8 * listed[0].norm and "median norm" in (listed[3].reason or "")
    assert admin.rounds(created.run_id)[0].rejected == 1


def test_quality_probe_rejects_a_harmful_update(http: TestClient, admin: HubClient, corpus_dir: Path) -> None:
    recipe = tiny_recipe(corpus_dir, quorum=3, extra="[validation]\nprobe = true\nprobe_tolerance = 0.05\n")
    created = admin.create_run(recipe)
    assert submit_values(http, admin, created.run_id, [1e-6]) == [("accepted", None)]
    client, wid = join(http, admin, created.run_id, "noisy")
    grant = work(client, wid)
    shapes = constant_update(client, grant.blob_sha256, 0.0)
    noise = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(0)) for k, v in shapes.items()}
    reply = client.submit(meta(grant, wid), to_bytes(noise))
    assert reply.status == "rejected" and "quality probe" in (reply.reason or "")


@pytest.mark.parametrize(
    ("method", "expected"), [("median", 0.02), ("trimmed_mean", 0.02), ("mean", 10.03 / 3)]
)
def test_robust_aggregation_of_a_round(
    http: TestClient, admin: HubClient, corpus_dir: Path, method: str, expected: float
) -> None:
    extra = (
        f'[outer]\nkind = "average"\n[aggregation]\nmethod = "{method}"\ntrim_fraction = 0.34\n'
        + OUTLIERS_PASS
    )
    created = admin.create_run(tiny_recipe(corpus_dir, quorum=3, extra=extra))
    submit_values(http, admin, created.run_id, [0.01, 0.02, 10.0])
    reader = HubClient(http, admin.token, retry_s=0, run_id=created.run_id)
    v0, v1 = (from_bytes(reader.blob(admin.version(created.run_id, n).blob_sha256)) for n in (0, 1))
    name = next(k for k, v in v0.items() if v.is_floating_point())
    assert torch.allclose(v1[name], v0[name] - expected, atol=1e-5)


def test_clipping_is_counted_in_round_metrics(http: TestClient, admin: HubClient, corpus_dir: Path) -> None:
    extra = "[aggregation]\nclip_multiple = 1.0\n" + OUTLIERS_PASS
    created = admin.create_run(tiny_recipe(corpus_dir, quorum=3, extra=extra))
    submit_values(http, admin, created.run_id, [0.01, 0.01, 5.0])
    assert admin.rounds(created.run_id)[0].clipped == 1


def test_an_update_far_larger_than_the_model_is_rejected_by_default(
    http: TestClient, admin: HubClient, corpus_dir: Path
) -> None:
    """1e30 in every tensor is finite, so the structural checks pass it; with no norm history yet
    the size bound (always on) rejects it, and the next version stays finite."""
    created = admin.create_run(tiny_recipe(corpus_dir, quorum=2))
    replies = submit_values(http, admin, created.run_id, [1e30, 0.01, 0.01])
    assert [r[0] for r in replies] == ["rejected", "accepted", "accepted"]
    assert "exceeds 10 x the size" in (replies[0][1] or "") and "max_relative_norm" in (replies[0][1] or "")
    version = admin.status(created.run_id).latest_version
    assert version is not None and version.number == 1 and version.val_loss is not None
    reader = HubClient(http, admin.token, retry_s=0, run_id=created.run_id)
    assert all(bool(torch.isfinite(t).all()) for t in from_bytes(reader.blob(version.blob_sha256)).values())
