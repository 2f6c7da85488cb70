"""Core math against hand-computed values."""

import math

import pytest
import torch

from tessera.core.aggregation import WeightedMean, staleness_weight, weighted_mean
from tessera.core.outer import OuterSettings, outer_optimizer
from tessera.core.pseudo_gradient import apply_delta, pseudo_gradient
from tessera.core.tensors import check_compatible, from_bytes, global_norm, to_bytes
from tessera.errors import ConfigError, MalformedContribution


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_pseudo_gradient_is_global_minus_local() -> None:
    g = {"w": t(1.0, 2.0, 3.0), "step": torch.tensor([5])}
    local = {"w": t(0.5, 2.5, 1.0), "step": torch.tensor([7])}
    delta = pseudo_gradient(g, local)
    assert set(delta) == {"w"}  # integer buffers are not trained
    assert torch.equal(delta["w"], t(0.5, -0.5, 2.0))


def test_apply_delta_subtracts_scaled_delta() -> None:
    out = apply_delta({"w": t(1.0, 1.0), "b": t(3.0)}, {"w": t(0.5, -1.0)}, scale=2.0)
    assert torch.equal(out["w"], t(0.0, 3.0))
    assert torch.equal(out["b"], t(3.0))


def test_token_weighted_mean() -> None:
    # (100 * [1, 2] + 300 * [5, 6]) / 400 = [4, 5]
    mean = weighted_mean([({"w": t(1.0, 2.0)}, 100.0), ({"w": t(5.0, 6.0)}, 300.0)])
    assert torch.allclose(mean["w"], t(4.0, 5.0))


def test_streaming_mean_rejects_nonpositive_weight_and_empty_result() -> None:
    acc = WeightedMean()
    with pytest.raises(ValueError):
        acc.result()
    with pytest.raises(ValueError):
        acc.add({"w": t(1.0)}, 0.0)


def test_staleness_weight() -> None:
    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(2, 0.5) == 0.25
    with pytest.raises(ValueError):
        staleness_weight(-1, 0.5)


def test_nesterov_two_steps_by_hand() -> None:
    # lr 0.7, momentum 0.9, theta 1.0, outer gradients 0.1 then 0.2.
    # step 1: m = 0.1;            theta = 1 - 0.7 * (0.1 + 0.9 * 0.1)  = 0.867
    # step 2: m = 0.9*0.1+0.2=0.29; theta = 0.867 - 0.7 * (0.2 + 0.9 * 0.29) = 0.5443
    opt = outer_optimizer(OuterSettings())
    p, s = opt.step({"w": t(1.0)}, {"w": t(0.1)}, {})
    assert torch.allclose(p["w"], t(0.867)) and torch.allclose(s["w"], t(0.1))
    p, s = opt.step(p, {"w": t(0.2)}, s)
    assert torch.allclose(p["w"], t(0.5443)) and torch.allclose(s["w"], t(0.29))


def test_nesterov_matches_torch_sgd() -> None:
    param = torch.nn.Parameter(t(1.0, -2.0))
    sgd = torch.optim.SGD([param], lr=0.7, momentum=0.9, nesterov=True)
    opt = outer_optimizer(OuterSettings())
    params, state = {"w": t(1.0, -2.0)}, {}
    for grad in (t(0.3, -0.1), t(0.2, 0.4), t(-0.5, 0.1)):
        param.grad = grad.clone()
        sgd.step()
        params, state = opt.step(params, {"w": grad}, state)
    assert torch.allclose(params["w"], param.detach())


def test_averaging_is_fedavg() -> None:
    # theta - mean(theta - local_i) = mean(local_i)
    theta = {"w": t(1.0, 1.0)}
    locals_ = [t(0.0, 2.0), t(2.0, 4.0)]
    delta = weighted_mean([(pseudo_gradient(theta, {"w": x}), 1.0) for x in locals_])
    p, state = outer_optimizer(OuterSettings(kind="average")).step(theta, delta, {})
    assert torch.allclose(p["w"], t(1.0, 3.0)) and state == {}


def test_outer_settings_validate() -> None:
    with pytest.raises(ConfigError, match="outer optimizer"):
        OuterSettings(kind="adam")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="momentum"):
        OuterSettings(momentum=1.5)


def test_safetensors_round_trip_and_garbage() -> None:
    tensors = {"a": t(1.0, 2.0), "b": torch.zeros(2, 3)}
    back = from_bytes(to_bytes(tensors))
    assert torch.equal(back["a"], tensors["a"]) and back["b"].shape == (2, 3)
    with pytest.raises(MalformedContribution, match="safetensors"):
        from_bytes(b"\x80\x04 definitely not safetensors")


def test_global_norm() -> None:
    assert global_norm({"a": t(3.0), "b": t(4.0)}) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        ({"w": t(1.0, 2.0)}, "names"),
        ({"w": t(1.0, 2.0), "b": t(1.0), "x": t(1.0)}, "names"),
        ({"w": t(1.0, 2.0, 3.0), "b": t(1.0)}, "shape"),
        ({"w": torch.tensor([1.0, 2.0], dtype=torch.float64), "b": t(1.0)}, "dtype"),
        ({"w": t(1.0, float("nan")), "b": t(1.0)}, "NaN or Inf"),
        ({"w": t(1.0, float("inf")), "b": t(1.0)}, "NaN or Inf"),
    ],
)
def test_check_compatible_rejects(candidate: dict[str, torch.Tensor], message: str) -> None:
    reference = {"w": t(0.0, 0.0), "b": t(0.0)}
    with pytest.raises(MalformedContribution, match=message):
        check_compatible(candidate, reference)


def test_inner_training_stops_when_told_and_counts_what_it_did() -> None:
    from tessera.core.inner import InnerSettings, InnerTrainer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    trainer = InnerTrainer(model, InnerSettings(lr=0.01, loss="mse"))
    batches = iter(lambda: (torch.randn(2, 4), torch.randn(2, 3)), None)
    asked = []
    result = trainer.train(batches, 100, stop=lambda: len(asked.append(1) or asked) >= 7)
    assert (result.steps, result.tokens) == (7, 7 * 2 * 3)
    assert trainer.train(batches, 3, stop=lambda: True).steps == 1


def test_replay_gain_is_the_part_of_the_replays_gain_the_upload_made() -> None:
    from tessera.core.validation import replay_gain

    assert replay_gain(2.0, 1.1, 1.0) == pytest.approx(0.9)
    assert replay_gain(2.0, 2.5, 1.0) == pytest.approx(-0.5)
    assert replay_gain(2.0, float("nan"), 1.0) == -math.inf
    assert replay_gain(2.0, 1.0, 2.0) is None  # a replay that gained nothing cannot tell
