"""[run] settings of a recipe: a quorum as a count or a fraction of the active workers, the
adaptive deadline's k and the run's priority in the pool, each checked with a message naming it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tessera.errors import ConfigError
from tessera.recipe import RunSettings, parse_recipe

pytestmark = pytest.mark.timeout(60)


def run_of(lines: str) -> RunSettings:
    return parse_recipe(f"[run]\n{lines}\n[model]\n").run


def test_a_quorum_is_a_count_or_a_fraction_of_the_active_workers() -> None:
    count = run_of("quorum = 4")
    assert not count.elastic and count.min_quorum == 4 and count.quorum_for(100) == 4
    half = run_of("quorum = 0.5")
    assert half.elastic and half.min_quorum == 1
    assert [half.quorum_for(n) for n in (0, 1, 4, 7, 8, 200)] == [1, 1, 2, 4, 4, 100]
    assert run_of("quorum = 0.1").quorum_for(30) == 3  # 0.1 x 30 is 3.0000000000000004 in floats


def test_deadline_k_and_priority() -> None:
    run = run_of("deadline_k = 2.5\npriority = -3")
    assert (run.deadline_k, run.priority) == (2.5, -3)
    assert (RunSettings().deadline_k, RunSettings().priority) == (0.0, 0.0)  # off; neutral


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("quorum = 0", "run.quorum must be from 1 to"),
        ("quorum = 1.0", r"run.quorum = 1.0: a fraction .* above 0 and below 1"),
        ("quorum = 1.5", "write an integer"),
        ("quorum = 0.0", "above 0 and below 1"),
        ("quorum = -0.25", "above 0 and below 1"),
        ("quorum = true", "run.quorum = True"),
        ('quorum = "half"', "run.quorum = 'half'"),
        ("deadline_k = -1", "run.deadline_k must be from 0 to 100"),
        ("deadline_k = 100.5", "run.deadline_k must be from 0 to 100"),
        ("deadline_k = true", "run.deadline_k = True"),
        ("priority = 10.5", "run.priority must be from -10 to 10"),
        ("priority = -11", "run.priority must be from -10 to 10"),
        ("priority = false", "run.priority = False"),
    ],
)
def test_bad_run_settings_are_refused_by_name(lines: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_of(lines)


@pytest.mark.parametrize("key", ["quorum", "deadline_k", "priority"])
def test_a_bool_is_not_a_number_in_code_either(key: str) -> None:
    with pytest.raises(ConfigError, match=f"run.{key} must be"):
        RunSettings(**{key: True})


def test_a_module_s_own_quorum_is_a_count() -> None:
    recipe = parse_recipe(
        '[run]\nquorum = 0.5\n[model]\n[modules.a]\nparams = ["a.*"]\nquorum = 2\n'
        '[modules.b]\nparams = ["b.*"]\n'
    )
    assert recipe.for_module("a").run.quorum == 2 and recipe.for_module("b").run.quorum == 0.5
    with pytest.raises(ConfigError, match="run.quorum"):
        replace(recipe.run, quorum=3.0)
