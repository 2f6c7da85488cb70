"""Run schedules: H per round, the nominal step each round starts at, the learning rate at each
step (checked against values computed by hand), and the recipe keys that set them."""

from __future__ import annotations

import math

import pytest
import torch

from tessera.core.inner import InnerSettings, InnerTrainer
from tessera.core.schedule import RunSchedule, lr_fraction
from tessera.errors import ConfigError
from tessera.recipe import parse_recipe

SYNC = RunSchedule(inner_steps=100, by_round=(25, 25, 50), rounds=5, lr_schedule="cosine", warmup_steps=10)


def test_rounds_take_the_listed_h_then_inner_steps() -> None:
    assert [SYNC.steps(r) for r in range(5)] == [25, 25, 50, 100, 100]
    assert [SYNC.start(r) for r in range(6)] == [0, 25, 50, 100, 200, 300]
    assert SYNC.total_steps == 300


def test_cosine_warms_up_then_falls_to_its_final_fraction_at_the_last_step() -> None:
    # 301 steps: warm-up (step + 1) / 10; then 0.1 + 0.9 * (1 + cos(pi * (step - 10) / 290)) / 2
    assert lr_fraction("cosine", 0, 301, 10, 0.1) == pytest.approx(0.1)
    assert lr_fraction("cosine", 9, 301, 10, 0.1) == pytest.approx(1.0)
    assert lr_fraction("cosine", 10, 301, 10, 0.1) == pytest.approx(1.0)
    assert lr_fraction("cosine", 155, 301, 10, 0.1) == pytest.approx(0.55)
    assert lr_fraction("cosine", 300, 301, 10, 0.1) == pytest.approx(0.1)  # the last step
    assert lr_fraction("constant", 4, 301, 10, 0.1) == pytest.approx(0.5)  # warm-up, then 1
    assert lr_fraction("constant", 155, 301, 10, 0.1) == 1.0


def test_a_lease_is_placed_on_its_round_in_proportion() -> None:
    # round 3 spans nominal steps 100..199; a lease of 50 steps takes every other one of them
    whole, half = SYNC.lr_scale(3, 100), SYNC.lr_scale(3, 50)
    expected = 0.1 + 0.9 * (1 + math.cos(math.pi * (140 - 10) / 289)) / 2  # 300 steps: last 299
    assert whole(40) == pytest.approx(expected) and half(20) == pytest.approx(expected)
    assert SYNC.lr_scale(0, 25)(0) == pytest.approx(0.1)  # warm-up: 1 / 10
    # steps past the lease (a worker training on while its upload travels) stay in the round
    assert SYNC.lr_scale(4, 100)(150) == pytest.approx(0.1)


def test_inner_trainer_sets_each_steps_learning_rate() -> None:
    model = torch.nn.Linear(4, 1)
    trainer = InnerTrainer(model, InnerSettings(lr=0.01, loss="mse", grad_clip=0))
    batches = iter([(torch.ones(2, 4), torch.zeros(2, 1))] * 3)
    seen: list[float] = []
    trainer.train(
        batches,
        3,
        on_step=lambda _: seen.append(trainer.optimizer.param_groups[0]["lr"]),
        lr_scale=lambda j: [1.0, 0.5, 0.25][j],
    )
    assert seen == pytest.approx([0.01, 0.005, 0.0025])


RECIPE = """[run]
name = "r"
rounds = 4
[model]
factory = "tessera.models.lm:build"
[train]
inner_steps = 80
"""


def test_recipe_keys_set_the_schedule() -> None:
    recipe = parse_recipe(
        RECIPE + 'inner_steps_by_round = [20, 40]\nlr_schedule = "cosine"\nwarmup_steps = 5\n'
        "final_lr_fraction = 0.2\n"
    )
    schedule = recipe.schedule
    assert [schedule.steps(r) for r in range(4)] == [20, 40, 80, 80] and schedule.total_steps == 220
    assert schedule.lr_scale(3, 80)(79) == pytest.approx(0.2, abs=1e-3)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("inner_steps_by_round = [10, 10, 10, 10, 10]", "lists 5 rounds but the run has 4"),
        ("inner_steps_by_round = [10, 0]", "each entry must be an integer from 1"),
        ('inner_steps_by_round = ["10"]', "inner_steps_by_round"),
        ('lr_schedule = "linear"', "lr_schedule 'linear' unknown"),
        ("final_lr_fraction = 1.5", "final_lr_fraction must be from 0 to 1"),
        ("warmup_steps = -1", "warmup_steps must be from 0"),
        ("warmup_steps = 320", "does not end before the last of the 320 inner steps of the run"),
    ],
)
def test_bad_schedules_are_refused_by_name(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_recipe(RECIPE + extra + "\n")


def test_a_modules_rounds_are_checked_against_the_list_it_inherits() -> None:
    module = '[modules.head]\nparams = ["head.*"]\nrounds = 1\n'
    with pytest.raises(ConfigError, match="lists 2 rounds but module head has 1"):
        parse_recipe(RECIPE + "inner_steps_by_round = [10, 10]\n" + module)
    own_h = module + "inner_steps = 5\n"  # a module with its own H takes no list
    assert (
        parse_recipe(RECIPE + "inner_steps_by_round = [10, 10]\n" + own_h)
        .for_module("head")
        .schedule.steps(0)
        == 5
    )
