"""Adapters at the hub: checked against the run's model, versioned per owner and name, private
unless shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tessera.api.client import HubClient
from tessera.api.messages import AdapterMeta
from tessera.core.inner import cross_entropy
from tessera.core.tensors import from_bytes, to_bytes
from tessera.errors import MalformedContribution, NotFound
from tessera.finetune import LoraSettings, finetune
from tessera.recipe import parse_recipe
from tessera.task import build_model, load_data
from tests.helpers import join, reading, tiny_recipe

pytestmark = pytest.mark.timeout(180)
pytest.importorskip("peft")


def meta(result_targets: list[str], **fields: object) -> AdapterMeta:
    base = {"name": "mine", "base_version": 0, "rank": 2, "alpha": 4.0, "target_modules": result_targets}
    base |= {"data_fingerprint": "ab" * 32, "data_tokens": 64, "steps": 2}
    return AdapterMeta.model_validate({**base, **fields})


def test_adapters_are_checked_versioned_and_private(admin: HubClient, http, corpus_dir: Path) -> None:  # type: ignore[no-untyped-def]
    recipe_text = tiny_recipe(corpus_dir)
    run_id = admin.create_run(recipe_text).run_id
    recipe = parse_recipe(recipe_text)
    base = build_model(recipe)
    base.load_state_dict(from_bytes(admin.blob(admin.version(run_id, 0).blob_sha256, run_id)))
    own = load_data(recipe, str(corpus_dir), reading(corpus_dir))
    result = finetune(
        base, own, cross_entropy, LoraSettings(rank=2, alpha=4.0, steps=2, batch_size=2, eval_batches=1)
    )
    body = to_bytes(result.tensors)
    first = admin.upload_adapter(run_id, meta(result.targets), body)
    second = admin.upload_adapter(run_id, meta(result.targets, shared=True), body)
    assert (first.number, second.number, second.parent_id) == (1, 2, first.adapter_id)
    assert from_bytes(admin.adapter_blob(run_id, first.adapter_id)).keys() == result.tensors.keys()

    other, _ = join(http, admin, run_id, "reader")  # may read the run: sees only the shared one
    assert [a.adapter_id for a in other.adapters(run_id)] == [second.adapter_id]
    with pytest.raises(NotFound):
        other.adapter_blob(run_id, first.adapter_id)

    renamed = {k.replace("lora_A", "lora_C"): v for k, v in result.tensors.items()}
    with pytest.raises(MalformedContribution, match="is not named base_model.model"):
        admin.upload_adapter(run_id, meta(result.targets), to_bytes(renamed))
    wrong = {k: torch.zeros(3, 3) for k in result.tensors}
    with pytest.raises(MalformedContribution, match="needs lora_A .rank, fan-in. and lora_B"):
        admin.upload_adapter(run_id, meta(result.targets), to_bytes(wrong))
    flat = {k: torch.zeros(3) for k in result.tensors}  # 1-D: a 422 too, not a server error
    with pytest.raises(MalformedContribution, match="needs lora_A .rank, fan-in. and lora_B"):
        admin.upload_adapter(run_id, meta(result.targets), to_bytes(flat))
    assert len(admin.adapters(run_id)) == 2  # nothing kept of the refused ones
