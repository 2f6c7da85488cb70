"""Export folders: a transformers model that `from_pretrained` loads, any other model rebuilt by
`load_exported`, the run's tokenizer as transformers saves one, a model card and the lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tessera.api.messages import Balance, RunStatus, VersionInfo
from tessera.core.inner import outputs_of
from tessera.errors import ConfigError
from tessera.export import lineage_of, load_exported, write_folder
from tessera.recipe import parse_recipe
from tessera.sampling import sample
from tessera.task import build_model
from tests.data.test_sources import tokenizer_json

pytestmark = pytest.mark.timeout(120)
transformers = pytest.importorskip("transformers")

BYTE_LM = (
    '[run]\nname = "bytes"\n[model]\noptions = { context = 16, d_model = 16, n_layers = 1, n_heads = 2 }\n'
)
GPT2 = (
    '[run]\nname = "gpt2"\n[model]\nfactory = "tessera.models.hf:causal_lm"\n'
    'options = { model_type = "gpt2", '
    "config = { n_layer = 1, n_embd = 16, n_head = 2, n_positions = 16, vocab_size = 300 } }\n"
    '[data]\noptions = { context = 16, tokenizer = "tokenizer.json" }\n'
)


def status(recipe: str) -> RunStatus:
    version = VersionInfo(
        version_id="v" * 32, number=0, blob_sha256="0" * 64, nbytes=1, parent_id=None,
        contributions=[], val_loss=5.5, created_at=0.0,
    )  # fmt: skip
    return RunStatus(
        run_id="r" * 32, name="r", status="finished", rounds_total=1, rounds_done=1, current_round=1,
        latest_version=version, initial_val_loss=5.6, workers=1, recipe=recipe,
    )  # fmt: skip


def lineage(recipe: str):  # type: ignore[no-untyped-def]
    info = status(recipe)
    credit = Balance(provider_id="p", name="alice", kind="person", pflop=0.5, tokens=10, contributions=1)
    assert info.latest_version is not None
    return lineage_of(info, [info.latest_version], [credit])


def test_a_tessera_model_is_rebuilt_from_its_folder(tmp_path: Path) -> None:
    model = build_model(parse_recipe(BYTE_LM))
    files = write_folder(tmp_path / "out", model, BYTE_LM, lineage(BYTE_LM), license="apache-2.0")
    assert files == ["README.md", "lineage.json", "model.safetensors", "tessera.json"]
    again = load_exported(tmp_path / "out")
    ids = torch.randint(0, 256, (2, 8))
    assert torch.equal(outputs_of(model, ids), outputs_of(again, ids))
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith('---\nlibrary_name: "tessera"\nlicense: "apache-2.0"')
    assert "| alice | person | 0.500000 | 10 | 1 |" in card
    assert json.loads((tmp_path / "out" / "lineage.json").read_text())["contributors"][0]["name"] == "alice"
    with pytest.raises(ConfigError, match="is not empty; export into a new folder"):
        write_folder(tmp_path / "out", model, BYTE_LM, lineage(BYTE_LM))


def test_a_transformers_model_with_its_tokenizer_loads_in_transformers(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tessera.data.tokens import FileTokens

    tokenizer = tokenizer_json(tmp_path, ["fn main() { let x = 1; }"] * 20)
    model = build_model(parse_recipe(GPT2))
    write_folder(tmp_path / "hf", model, GPT2, lineage(GPT2), tokenizer=tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    model.eval()  # GPT-2's dropout off, as from_pretrained leaves it
    ids = torch.randint(0, 300, (1, 8))
    assert torch.allclose(loaded(ids).logits, outputs_of(model, ids), atol=1e-6)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    mine = FileTokens(tokenizer)
    assert tok("fn main")["input_ids"] == mine.encode(b"fn main").tolist()
    text = sample(model, mine, "fn ", 5, context=16, temperature=0.0)
    assert text.startswith("fn")
