"""`tessera demo --recipe FILE`: the user's recipe, with options over its common settings, trained
by the embedded hub and local worker processes, trusting what the user named on this machine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tessera.api.messages import RunStatus
from tessera.cli import app
from tessera.demo import DemoSettings, Overrides, demo_recipe, run_recipe
from tessera.errors import ConfigError, TesseraError
from tessera.recipe import parse_recipe
from tessera.testing.cluster import tessera_command
from tests.helpers import tiny_recipe

runner = CliRunner()
FACTORY = """
def build(context: int = 16, d_model: int = 16, n_layers: int = 1, n_heads: int = 2):
    from tessera.models.lm import build as lm
    return lm(context=context, d_model=d_model, n_layers=n_layers, n_heads=n_heads)
"""


@pytest.mark.timeout(120)
def test_demo_trains_a_recipe_with_its_settings_overridden(tmp_path: Path, corpus_dir: Path) -> None:
    """Its own factory (trusted with --trust, importable from the folder the demo runs in) and a
    data folder outside any data root: the recipe's, which the user gave."""
    (tmp_path / "own_factory.py").write_text(FACTORY)
    recipe = tmp_path / "tiny.toml"
    text = tiny_recipe(corpus_dir, rounds=3, quorum=2, inner_steps=3)
    recipe.write_text(text.replace("[model]\n", '[model]\nfactory = "own_factory:build"\n'))
    home, summary = tmp_path / "home", tmp_path / "summary.json"
    args = ("demo", "--recipe", str(recipe), "--home", str(home), "--json", str(summary), "--rounds", "2",
            "--outer", "average", "--codec", "int8", "--trust", "own_factory:build")  # fmt: skip
    done = subprocess.run(tessera_command(*args), cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(summary.read_text())
    assert result["workers"] == 2 and result["rounds"] == 2  # the recipe's quorum; --rounds over its 3
    assert all(r["accepted"] == 2 for r in result["per_round"]), result["per_round"]
    shown = runner.invoke(app, ["status", "--home", str(home), "--json"])
    assert shown.exit_code == 0, shown.output
    status = RunStatus.model_validate(json.loads(shown.stdout)["status"])
    assert status.status == "finished" and status.rounds_done == 2
    trained = parse_recipe(status.recipe)
    assert (trained.outer.kind, trained.communication.codec) == ("average", "int8")
    assert trained.model.factory == "own_factory:build" and trained.data.path == str(corpus_dir)
    assert trained.train.inner_steps == 3 and trained.run.collective is not None  # the demo's workers


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--outer", "adam"), "outer.kind = 'adam': Input should be 'nesterov' or 'average'"),
        (("--codec", "int5"), "codec 'int5' unknown: use one of"),
        (("--momentum", "1.5"), "outer momentum must be in [0, 1), got 1.5"),
        (("--workers", "1"), "has run.quorum = 2: its rounds close only with 2 contributions"),
    ],
)
def test_demo_refuses_a_bad_setting_before_it_starts(
    option: tuple[str, str], message: str, tmp_path: Path, corpus_dir: Path
) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(tiny_recipe(corpus_dir))
    home = tmp_path / "home"
    result = runner.invoke(app, ["demo", "--recipe", str(recipe), "--home", str(home), *option])
    assert isinstance(result.exception, TesseraError), result.output
    assert message in str(result.exception)
    assert not home.exists()  # no hub was started


def test_the_demos_own_recipe_is_unchanged_without_options_and_set_with_them(corpus_dir: Path) -> None:
    assert run_recipe(DemoSettings()) == demo_recipe(DemoSettings())  # `make demo` trains what it did
    settings = DemoSettings(overrides=Overrides(outer="average", outer_lr=1.0, codec="bf16", overlap=True))
    recipe = parse_recipe(run_recipe(settings))
    assert (recipe.outer.kind, recipe.outer.lr, recipe.outer.momentum) == ("average", 1.0, 0.5)
    assert recipe.communication.codec == "bf16" and recipe.communication.overlap
    assert recipe.run.rounds == 12 and recipe.train.inner_steps == 100  # the rest as before
    given = DemoSettings(recipe=tiny_recipe(corpus_dir), overrides=Overrides(inner_steps=7))
    assert parse_recipe(run_recipe(given)).train.inner_steps == 7
    assert given.trust.data_roots == (corpus_dir,)  # the recipe's [data] path, which the user gave
    with pytest.raises(ConfigError, match="train.inner_steps must be from 1"):
        run_recipe(DemoSettings(recipe=tiny_recipe(corpus_dir), overrides=Overrides(inner_steps=0)))
