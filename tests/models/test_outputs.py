"""Models from the ecosystem unchanged: a forward that returns a tensor, a ``transformers``
``ModelOutput`` or a dict with logits trains and evaluates; anything else, or a model that cannot
take the recipe's data, is refused when the run is created, saying what the contract is."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from tessera.api.client import HubClient
from tessera.core.inner import outputs_of
from tessera.errors import ConfigError
from tessera.testing.cluster import run_loops
from tessera.trust import Trust
from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSettings
from tests.helpers import tiny_recipe

pytestmark = pytest.mark.timeout(180)
transformers = pytest.importorskip("transformers")

USER_MODELS = '''
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel


def gpt2(n_embd: int = 16, n_layer: int = 1, n_head: int = 2, n_positions: int = 16) -> nn.Module:
    """A plain transformers model: its forward returns a ModelOutput."""
    sizes = dict(n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions)
    return GPT2LMHeadModel(GPT2Config(vocab_size=256, **sizes))


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(x), self.embed(x)


def pair() -> nn.Module:
    """A forward that returns a tuple: not an output tessera can compare with targets."""
    return Pair()


def broken() -> nn.Module:
    """A factory with a bug of its own."""
    return {}["vocab"]


def narrow() -> nn.Module:
    """Logits over 10 classes, for byte data of 256."""
    return nn.Sequential(nn.Embedding(256, 8), nn.Linear(8, 10))
'''
FACTORIES = ["user_models:gpt2", "user_models:pair", "user_models:narrow", "user_models:broken"]


@pytest.fixture
def trust(corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Trust]:
    """This test's hub and workers trust the user's own model module (and read the corpus)."""
    (tmp_path / "user_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield Trust.of(FACTORIES, data_roots=[corpus_dir])
    sys.modules.pop("user_models", None)


def with_model(recipe: str, factory: str, options: str = "{}") -> str:
    return recipe.replace(
        "[model]\noptions = { context = 16, d_model = 16, n_layers = 1, n_heads = 2 }",
        f'[model]\nfactory = "{factory}"\noptions = {options}',
    )


def test_outputs_of_takes_tensors_model_outputs_and_dicts() -> None:
    from transformers.modeling_outputs import CausalLMOutput

    logits = torch.randn(2, 3, 5)
    for output in (logits, CausalLMOutput(logits=logits), {"logits": logits}):
        model = nn.Module()
        model.forward = lambda _x, out=output: out  # type: ignore[method-assign]
        assert outputs_of(model, torch.zeros(2, 3, dtype=torch.long)) is logits
    model = nn.Module()
    model.forward = lambda _x: (logits, logits)  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="forward returned tuple; it must return a tensor"):
        outputs_of(model, torch.zeros(1))


def test_a_plain_transformers_model_trains_through_the_hub(
    admin: HubClient, corpus_dir: Path, tmp_path: Path, trust: Trust
) -> None:
    recipe = with_model(tiny_recipe(corpus_dir, rounds=2), "user_models:gpt2")
    run_id = admin.create_run(recipe).run_id
    loops = [
        WorkLoop(
            HubClient(admin.http, admin.token, retry_s=0, run_id=run_id),
            WorkerSettings(tmp_path / f"w{i}", name=f"w{i}", wait_s=2, trust=trust),
        )
        for i in range(2)
    ]
    assert not run_loops(loops)
    status = admin.status(run_id)
    assert status.status == "finished" and status.rounds_done == 2
    assert status.latest_version is not None and status.initial_val_loss is not None
    assert status.latest_version.val_loss is not None
    assert status.latest_version.val_loss < status.initial_val_loss


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("user_models:pair", "forward returned tuple; it must return a tensor of outputs"),
        ("user_models:narrow", "the model failed on a held-out batch of the recipe's data"),
        ("user_models:broken", "user_models:broken failed: KeyError: 'vocab'; fix the factory"),
    ],
)
def test_a_model_that_cannot_take_the_data_is_refused_at_creation(
    admin: HubClient, corpus_dir: Path, factory: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        admin.create_run(with_model(tiny_recipe(corpus_dir), factory))
    assert admin.runs() == []


def test_a_fixed_factory_takes_effect_without_restarting_the_hub(
    admin: HubClient, corpus_dir: Path, tmp_path: Path, trust: Trust
) -> None:
    recipe = with_model(tiny_recipe(corpus_dir), "user_models:broken")
    with pytest.raises(ConfigError, match="user_models:broken failed: KeyError"):
        admin.create_run(recipe)
    fixed = USER_MODELS.replace('return {}["vocab"]', "return gpt2()  # fixed")
    (tmp_path / "user_models.py").write_text(fixed)
    assert admin.create_run(recipe).run_id
