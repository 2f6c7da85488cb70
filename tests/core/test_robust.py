"""Robust aggregation against hand-computed values."""

import pytest
import torch

from tessera.core.robust import (
    AggregationSettings,
    aggregate,
    clip_to_norm,
    coordinate_median,
    trimmed_mean,
)
from tessera.errors import ConfigError


def d(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32)}


def test_clip_to_norm() -> None:
    assert torch.allclose(clip_to_norm(d(3.0, 4.0), 1.0)["w"], torch.tensor([0.6, 0.8]))
    assert torch.equal(clip_to_norm(d(0.3, 0.4), 1.0)["w"], torch.tensor([0.3, 0.4]))


def test_trimmed_mean_drops_extremes_per_coordinate() -> None:
    items = [d(1.0, 10.0), d(2.0, -50.0), d(3.0, 20.0), d(100.0, 30.0)]
    # k = floor(0.25 * 4) = 1 per end: coordinate 0 keeps {2, 3} -> 2.5; coordinate 1 keeps {10, 20} -> 15
    assert torch.allclose(trimmed_mean(items, 0.25)["w"], torch.tensor([2.5, 15.0]))
    with pytest.raises(ValueError, match="leaves none"):
        trimmed_mean(items[:2], 0.5)


def test_coordinate_median_odd_and_even() -> None:
    assert torch.allclose(coordinate_median([d(1.0), d(9.0), d(2.0)])["w"], torch.tensor([2.0]))
    assert torch.allclose(coordinate_median([d(1.0), d(9.0), d(2.0), d(4.0)])["w"], torch.tensor([3.0]))


def test_aggregate_with_clipping_bounds_an_outlier() -> None:
    honest = [(d(1.0, 0.0), 1.0), (d(0.0, 1.0), 1.0), (d(1.0, 1.0), 1.0)]
    attack = (d(-100.0, -100.0), 1.0)
    plain = aggregate([*honest, attack], AggregationSettings())
    clipped = aggregate([*honest, attack], AggregationSettings(clip_multiple=1.0))
    # median norm of {1, 1, 1.414, 141.4} = 1.207; the attack is scaled to that norm
    assert plain.clipped == 0 and clipped.clipped == 2
    assert float(plain.delta["w"][0]) < -20 and float(clipped.delta["w"][0]) > 0.2


def test_aggregate_mean_is_token_weighted_and_median_ignores_weights() -> None:
    items = [(d(0.0), 3.0), (d(4.0), 1.0), (d(10.0), 1.0)]
    assert torch.allclose(aggregate(items, AggregationSettings()).delta["w"], torch.tensor([2.8]))
    assert torch.allclose(
        aggregate(items, AggregationSettings(method="median")).delta["w"], torch.tensor([4.0])
    )


def test_settings_validate() -> None:
    with pytest.raises(ConfigError, match="method"):
        AggregationSettings(method="krum")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="trim_fraction"):
        AggregationSettings(trim_fraction=0.5)
    assert AggregationSettings().streaming and not AggregationSettings(method="median").streaming


def test_norm_verdict() -> None:
    from tessera.core.validation import ValidationSettings, norm_verdict

    on = ValidationSettings(norm_bound=3.0)
    assert norm_verdict(100.0, [1.0, 2.0], on) is None  # too little history to judge
    assert norm_verdict(5.9, [1.0, 2.0, 3.0], on) is None  # 5.9 <= 3 x median 2
    assert "exceeds 3 x the median norm 2" in (norm_verdict(6.1, [1.0, 2.0, 3.0], on) or "")
    # on by default at 10 x the median; 0 turns it off
    assert "exceeds 10 x the median" in (norm_verdict(21.0, [1.0, 2.0, 3.0], ValidationSettings()) or "")
    assert norm_verdict(19.0, [1.0, 2.0, 3.0], ValidationSettings()) is None
    assert norm_verdict(1e9, [1.0, 2.0, 3.0], ValidationSettings(norm_bound=0)) is None


def test_size_verdict_bounds_an_update_by_its_base_version() -> None:
    from tessera.core.validation import ValidationSettings, base_size, size_verdict

    assert base_size(3.0, 4) == 3.0 and base_size(0.0, 100) == 1.0  # a zero module may still move
    default = ValidationSettings()
    assert size_verdict(29.0, 3.0, default) is None
    assert "exceeds 10 x the size 3" in (size_verdict(31.0, 3.0, default) or "")
    assert size_verdict(float("inf"), 3.0, default) is not None
    assert size_verdict(float("nan"), 3.0, default) is not None


def test_probe_verdict() -> None:
    from tessera.core.validation import ValidationSettings, probe_verdict

    s = ValidationSettings(probe=True, probe_tolerance=0.1)
    assert probe_verdict(2.0, 2.2, s) is None
    assert "quality probe" in (probe_verdict(2.0, 2.21, s) or "")
    assert probe_verdict(2.0, float("nan"), s) is not None


def test_direction_check_drops_noise_and_sign_flips() -> None:
    from tessera.core.robust import cosine, misaligned

    assert cosine(d(1.0, 0.0), d(0.0, 2.0)) == 0.0 and cosine(d(1.0, 1.0), d(-2.0, -2.0)) == pytest.approx(
        -1.0
    )
    honest = [(d(1.0, 1.0, 0.1), 1.0), (d(1.0, 0.9, 0.0), 1.0), (d(0.9, 1.0, 0.2), 1.0)]
    flipped = (d(-10.0, -10.0, -1.0), 1.0)
    orthogonal = (d(1.0, -1.0, 0.0), 1.0)
    assert misaligned([*honest, flipped], 0.1).keys() == {3}
    assert misaligned([*honest, orthogonal], 0.1).keys() == {3}
    result = aggregate([*honest, flipped], AggregationSettings(min_cosine=0.1))
    assert result.dropped.keys() == {3} and float(result.delta["w"][0]) > 0.9
