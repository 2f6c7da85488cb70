import pytest
import torch

from tessera.errors import ConfigError
from tessera.models.lm import ByteLM, ByteLMConfig, build, flops_per_token
from tessera.recipe import parse_recipe
from tessera.task import build_model
from tessera.trust import Trust

SMALL = ByteLMConfig(context=16, d_model=32, n_layers=1, n_heads=2)


def test_logits_shape() -> None:
    model = ByteLM(SMALL)
    out = model(torch.randint(0, 256, (3, 16)))
    assert out.shape == (3, 16, 256)


def test_model_is_causal() -> None:
    model = ByteLM(SMALL).eval()
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 256
    assert torch.allclose(model(x)[0, :10], model(y)[0, :10], atol=1e-6)
    assert not torch.allclose(model(x)[0, 10:], model(y)[0, 10:])


def test_context_limit_is_enforced() -> None:
    with pytest.raises(ValueError, match="context"):
        ByteLM(SMALL)(torch.zeros(1, 17, dtype=torch.long))


def test_config_validation_names_the_option() -> None:
    with pytest.raises(ConfigError, match="n_heads"):
        ByteLMConfig(d_model=30, n_heads=4)


def test_build_model_is_deterministic_and_leaves_global_rng_alone() -> None:
    recipe = parse_recipe(
        "seed = 3\n[run]\n[model]\noptions = { context = 16, d_model = 32, n_layers = 1, n_heads = 2 }"
    )
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = build_model(recipe), build_model(recipe)
    assert torch.equal(torch.rand(1), before)
    for (_, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb)


def test_generate_extends_prompt() -> None:
    out = build(context=16, d_model=32, n_layers=1, n_heads=2).generate(
        torch.tensor([100, 101]), 20, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (22,) and int(out.max()) < 256


def test_flops_per_token_counts_6n_and_attention() -> None:
    cfg = ByteLMConfig(context=8, d_model=4, n_layers=1, n_heads=1, vocab_size=10)
    assert flops_per_token(cfg) == 6 * (12 * 16 + 2 * 10 * 4) + 6 * 8 * 4


@pytest.mark.parametrize("spec", ["nocolon", "no_such_module_xyz:f", "tessera.models.lm:nothing"])
def test_resolve_factory_errors(spec: str) -> None:
    with pytest.raises(ConfigError):
        Trust(frozenset() if spec == "nocolon" else frozenset({spec})).resolve(spec, "model")
