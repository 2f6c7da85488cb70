"""`tessera worker` tells its owner what it does (plain lines off a terminal, a progress bar on
one), and a worker that cannot build the run's model exits, with the fix, before it registers."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from tessera.api.client import HubClient
from tessera.api.messages import ContributionReply
from tessera.cli.worker import BarReporter, LineReporter
from tessera.core.inner import InnerResult
from tessera.testing.cluster import embedded_hub, start_worker
from tessera.trust import Trust
from tessera.worker.session import Step
from tests.helpers import FakeClock, reading, tiny_recipe

pytestmark = pytest.mark.timeout(120)
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
REPLY = ContributionReply(contribution_id="c", status="accepted", round=2, weight=1.0)
RESULT = InnerResult(steps=10, tokens=640, mean_loss=2.5, final_loss=2.4, compute_s=0.5)


def test_worker_prints_plain_lines_of_what_it_does_off_a_terminal(tmp_path: Path, corpus_dir: Path) -> None:
    with (
        embedded_hub(tmp_path / "hub", reading(corpus_dir)) as (url, admin_token),
        HubClient.connect(url, admin_token) as admin,
    ):
        run_id = admin.create_run(tiny_recipe(corpus_dir, rounds=2, quorum=1, inner_steps=3)).run_id
        token = admin.create_provider("volunteer").token
        log = tmp_path / "worker.log"
        options = ("--data-root", str(corpus_dir), "--progress-every", "0")
        proc = start_worker((url, token, run_id), tmp_path / "w", *options, log=log)
        assert proc.wait(timeout=90) == 0, log.read_text()
    out = log.read_text()
    assert "\x1b" not in out  # no ANSI codes in a log file
    expected = [
        f"{STAMP}connecting to the hub at {url} \\(run {run_id}\\)",
        f"{STAMP}run {run_id} runs here: model tessera.models.lm:build",
        f"{STAMP}loading the data",
        f"{STAMP}building the model",
        f"{STAMP}joined run {run_id} as worker",
        f"{STAMP}round 0: step 1/3, [\\d,]+ tokens/s, train loss \\d+\\.\\d{{4}}, round's steps done in",
        f"{STAMP}round 0: accepted contribution \\(3 steps, 192 tokens",
        f"{STAMP}downloading version 1 \\(\\d+ kB\\)",  # its change is no smaller than the whole
        f"{STAMP}round 1: step 3/3",
        f"{STAMP}round 1: accepted contribution",
        "run finished: 2/2 contributions accepted, .* MB up, .* MB down, computing .* of .* s$",
    ]
    at = 0
    for pattern in expected:  # each in order, on a line of its own
        found = re.compile(f"^{pattern}", re.MULTILINE).search(out, at)
        assert found is not None, f"{pattern!r} not after position {at} in:\n{out}"
        at = found.end()


def test_line_reporter_tells_the_steps_every_few_seconds_and_each_contribution() -> None:
    out, clock = io.StringIO(), FakeClock()
    reporter = LineReporter(out, every_s=10.0, clock=clock)
    reporter.phase("building the model")
    reporter.step(Step(round=2, done=1, total=10, tokens=64, loss=3.0, compute_s=0.05))  # too soon
    clock.advance(10.0)
    reporter.step(Step(round=2, done=4, total=10, tokens=256, loss=2.75, compute_s=2.0))
    reporter.step(Step(round=2, done=5, total=10, tokens=320, loss=2.5, compute_s=2.5))  # too soon
    reporter.contribution(REPLY, RESULT)
    lines = [line[20:] for line in out.getvalue().splitlines()]  # without the timestamps
    assert lines == [
        "building the model",
        "round 2: step 4/10, 128 tokens/s, train loss 2.7500, round's steps done in 3 s",
        "round 2: accepted contribution (10 steps, 640 tokens in 0.50 s of compute, 1,280 tokens/s, "
        "train loss 2.5000)",
    ]


def test_bar_reporter_draws_the_rounds_steps_above_which_phases_print() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    reporter = BarReporter(terminal)
    reporter.phase("joined run r as worker w, shard s")
    for done in range(1, 8):
        reporter.step(Step(round=3, done=done, total=100, tokens=64 * done, loss=2.0, compute_s=0.5 * done))
    reporter.contribution(REPLY, RESULT)
    reporter.close()
    drawn = re.sub("\x1b\\[[0-9;?]*[A-Za-z]", "", terminal.file.getvalue())  # type: ignore[attr-defined]
    assert "joined run r as worker w, shard s" in drawn and "round 2: accepted contribution" in drawn
    assert re.search(r"round 3 ━+╸?━+ +7/100 steps, 128 tokens/s, train loss 2\.0000 46 s to go", drawn), (
        drawn
    )
    assert "0/100" not in drawn  # no bar before the first step


BRITTLE = """
import os

def build(context: int = 16, d_model: int = 16, n_layers: int = 1, n_heads: int = 2):
    if os.environ.get("TESSERA_TEST_BREAK_FACTORY"):
        raise OSError("this machine has no accelerator for it")
    from tessera.models.lm import build as lm
    return lm(context=context, d_model=d_model, n_layers=n_layers, n_heads=n_heads)
"""
SPEC = "brittle_factory:build"
CASES = {  # how the worker's machine differs from the hub's -> what its error must say
    "untrusted": (
        (),
        False,
        {},
        f"is not trusted on this machine, so it was not imported. .* --trust {SPEC}",
    ),
    "unimportable": (
        ("--trust", SPEC),
        False,
        {},
        "cannot import 'brittle_factory' .*must be importable on this machine: install its package, "
        "or start tessera in the folder that holds it \\(or add that folder to PYTHONPATH\\)",
    ),
    "factory fails": (
        ("--trust", SPEC),
        True,
        {"TESSERA_TEST_BREAK_FACTORY": "1"},
        f"{SPEC} failed: OSError: this machine has no accelerator for it; fix the factory or its options",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_worker_that_cannot_build_the_model_exits_with_the_fix_unregistered(
    case: str, tmp_path: Path, corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options, importable, env, message = CASES[case]
    factories = tmp_path / "factories"
    factories.mkdir()
    (factories / "brittle_factory.py").write_text(BRITTLE)
    monkeypatch.syspath_prepend(str(factories))  # the hub, in this process, can build the model
    recipe = tiny_recipe(corpus_dir, quorum=1).replace("[model]\n", f'[model]\nfactory = "{SPEC}"\n')
    hub_trust = Trust.of([SPEC], [corpus_dir])
    with (
        embedded_hub(tmp_path / "hub", hub_trust) as (url, admin_token),
        HubClient.connect(url, admin_token) as admin,
    ):
        run_id = admin.create_run(recipe).run_id
        log = tmp_path / "worker.log"
        where = factories if importable else tmp_path
        proc = start_worker(
            (url, admin_token, run_id), tmp_path / "w", "--data-root", str(corpus_dir), *options,
            log=log, cwd=where, env=env,
        )  # fmt: skip
        assert proc.wait(timeout=90) == 1, log.read_text()
        assert admin.status(run_id).workers == 0  # it never registered
    said = " ".join(log.read_text().split())  # the console wraps long lines
    assert re.search(message, said), said
    assert "Traceback" not in said and not (tmp_path / "w" / "identity.json").exists()
