"""What scripts read (`--json` of the commands that print ids, tokens and runs; `status --watch`)
and what people read (tables that fit 80 columns), against real hubs on loopback."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tessera.api.client import HubClient
from tessera.api.messages import Balance, LedgerReport, RoundMetrics, RunStatus, VersionInfo
from tessera.cli import app
from tessera.cli.tables import ledger_table, run_view
from tessera.testing.cluster import ROOT, embedded_hub, run_loops, tessera_command
from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSettings
from tests.helpers import reading, tiny_recipe

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()


@pytest.fixture
def hub(tmp_path: Path, corpus_dir: Path) -> Iterator[tuple[str, str]]:
    """A real hub on a loopback port, its data in tmp_path/hub: its URL and admin token."""
    with embedded_hub(tmp_path / "hub", reading(corpus_dir)) as (url, admin):
        yield url, admin


def invoke_json(*args: str) -> dict[str, object]:
    """The one JSON object a command printed on stdout, and nothing else."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1, result.stdout
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def train(url: str, admin: str, run_id: str, corpus: Path, state: Path, workers: int = 1) -> None:
    clients = [HubClient.connect(url, admin, run_id=run_id) for _ in range(workers)]
    loops = [
        WorkLoop(c, WorkerSettings(state / f"w{i}", wait_s=2, trust=reading(corpus)))
        for i, c in enumerate(clients)
    ]
    try:
        assert not run_loops(loops, timeout=60)
    finally:
        for c in clients:
            c.close()


def test_json_of_provider_token_and_run_creation(
    hub: tuple[str, str], tmp_path: Path, corpus_dir: Path
) -> None:
    url, admin = hub
    created = invoke_json("provider", "create", "lab", "--hub", url, "--token", admin, "--json")
    assert created["name"] == "lab" and created["kind"] == "person" and created["is_admin"] is False
    token = str(created["token"])
    me = invoke_json("whoami", "--hub", url, "--token", token, "--json")
    assert me["provider_id"] == created["provider_id"] and me["name"] == "lab"
    second = invoke_json("token", "create", "--hub", url, "--token", token, "--label", "ci", "--json")
    assert set(second) == {"token_id", "token"} and second["token"] != token
    assert invoke_json("whoami", "--hub", url, "--token", str(second["token"]), "--json")["name"] == "lab"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(tiny_recipe(corpus_dir))
    run = invoke_json("create-run", str(recipe), "--hub", url, "--token", token, "--json")
    assert run["join"] == f"tessera worker --hub {url} --token THEIR_TOKEN --run {run['run_id']}"
    with HubClient.connect(url, token) as client:
        assert client.status(str(run["run_id"])).name == "tiny"


def test_status_json_carries_the_rounds_from_the_hub_and_from_its_folder(
    hub: tuple[str, str], tmp_path: Path, corpus_dir: Path
) -> None:
    url, admin = hub
    with HubClient.connect(url, admin) as client:
        run_id = client.create_run(tiny_recipe(corpus_dir, rounds=2, quorum=1)).run_id
    train(url, admin, run_id, corpus_dir, tmp_path)
    over_http = invoke_json("status", "--hub", url, "--token", admin, "--run", run_id, "--json")
    from_folder = invoke_json("status", "--home", str(tmp_path / "hub"), "--json")  # the newest run
    for shown in (over_http, from_folder):
        status, rounds = RunStatus.model_validate(shown["status"]), shown["rounds"]
        assert status.run_id == run_id and status.status == "finished" and status.rounds_done == 2
        assert isinstance(rounds, list) and [RoundMetrics.model_validate(r).number for r in rounds] == [0, 1]
        assert all(r["accepted"] == 1 and r["val_loss"] is not None for r in rounds)
    watched = runner.invoke(app, ["status", "--hub", url, "--token", admin, "--watch", "--interval", "0.1"])
    assert watched.exit_code == 0 and watched.stdout.count("finished, 2/2 rounds") == 1  # finished: once


def test_status_watch_prints_each_change_until_the_run_finishes(
    hub: tuple[str, str], tmp_path: Path, corpus_dir: Path
) -> None:
    url, admin = hub
    with HubClient.connect(url, admin) as client:
        run_id = client.create_run(tiny_recipe(corpus_dir, rounds=3, quorum=1)).run_id
    args = (
        "status",
        "--hub",
        url,
        "--token",
        admin,
        "--run",
        run_id,
        "--watch",
        "--json",
        "--interval",
        "0.1",
    )
    watch = subprocess.Popen(tessera_command(*args), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())  # before any work: then the workers start
        train(url, admin, run_id, corpus_dir, tmp_path)
        rest, _ = watch.communicate(timeout=60)
    finally:
        watch.kill()
    seen = [first] + [json.loads(line) for line in rest.splitlines()]
    assert watch.returncode == 0
    assert seen[0]["status"]["rounds_done"] == 0 and seen[-1]["status"]["status"] == "finished"
    assert len(seen[-1]["rounds"]) == 3 and all(a != b for a, b in zip(seen, seen[1:], strict=False))


def wide_status(**changes: object) -> RunStatus:
    version = VersionInfo(
        version_id="v" * 32, number=120, blob_sha256="a" * 64, nbytes=987_654_321, parent_id=None,
        contributions=[], val_loss=2.3456, created_at=0.0,
    )  # fmt: skip
    fields: dict[str, object] = {
        "run_id": "0123456789abcdef" * 2, "name": "stdlib-demo-with-a-long-name", "status": "finished",
        "rounds_total": 10_000, "rounds_done": 10_000, "current_round": 10_000, "latest_version": version,
        "initial_val_loss": 5.6123, "workers": 1024, "recipe": "",
    }  # fmt: skip
    return RunStatus.model_validate({**fields, **changes})


def test_tables_fit_80_columns_with_nothing_cut_off() -> None:
    rounds = [
        RoundMetrics(
            number=9_998 + i,
            status="closed",
            base_version_id="b",
            version_id="v",
            val_loss=12.3456,
            train_loss=12.4567,
            accepted=1024,
            rejected=1000,
            clipped=0,
            tokens=10**12,
            bytes_in=123_456_789_012,
            bytes_out=98_765_432_101,
            wall_s=123_456.7,
            close_reason=None,
        )  # fmt: skip
        for i in range(2)
    ]
    modules = [wide_status(run_id=f"{i}" * 32, module=m) for i, m in enumerate(["trunk", "general-code"])]
    balances = [
        Balance(
            provider_id="p",
            name="demo-1a2b3c4d-worker-12",
            kind="collective",
            pflop=123_456.7891,
            tokens=123_456_789_012,
            contributions=1_234_567,
            used_pflop=234_567.8912,
        )  # fmt: skip
    ]
    terminal = Console(width=80, record=True)
    terminal.print(run_view(wide_status(), rounds))
    terminal.print(run_view(wide_status(modules=modules, latest_version=None), []))
    terminal.print(ledger_table(LedgerReport(providers=balances, collectives=balances)))
    text = terminal.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text, text  # no cell cut short
    for whole in (
        "1234567",
        "123456.789",
        "-111111.102",
        "123456.7",
        "123456.79",
        "98765.43",
        "10000/10000",
    ):
        assert whole in text, (whole, text)
    for title in ("held-out", "train", "acc", "rej", "MB up", "MB down", "wall s", "contribs"):
        assert f" {title} " in text, (title, text)  # each column title on one line
    assert all(m.run_id in text for m in modules) and "0123456789abcdef" * 2 in text
