"""`tessera demo`: the reference model trained by an embedded hub and local worker processes,
with a progress bar."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tessera.api.messages import RunStatus
from tessera.cli.app import HOME, app, console, setup_logging
from tessera.cli.tables import fmt_loss, print_ledger, print_run

if TYPE_CHECKING:
    from tessera.demo import DemoSummary


@app.command()
def demo(
    workers: Annotated[int, typer.Option(help="Local worker processes")] = 4,
    rounds: int = 12,
    inner_steps: Annotated[int, typer.Option(help="Inner steps H per round")] = 100,
    home: Annotated[Path, typer.Option(help="Folder for the hub's database, blobs and logs")] = HOME / "demo",
    data: Annotated[Path | None, typer.Option(help="A folder of text files instead of the stdlib")] = None,
    compare: Annotated[bool, typer.Option(help="Also train a single-process baseline")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write a JSON summary here")] = None,
    verbose: bool = False,
) -> None:
    """Train the reference model with an embedded hub and local worker processes."""
    from tessera.demo import DemoSettings, demo_recipe, run_demo, summarize, train_baseline
    from tessera.recipe import parse_recipe

    setup_logging(verbose)
    settings = DemoSettings(
        home=home, workers=workers, rounds=rounds, inner_steps=inner_steps, data_path=data
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
    )
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("starting", total=rounds)

        def started(url: str, run_id: str) -> None:
            bar.console.print(f"hub at {url}, run {run_id}, {workers} worker processes")

        def show(s: RunStatus) -> None:
            loss = fmt_loss(s.latest_version.val_loss if s.latest_version else None)
            bar.update(task, completed=s.rounds_done, description=f"held-out loss {loss}")

        run = run_demo(settings, started, show)
    print_run(run.status, run.rounds)
    print_ledger(run.ledger)
    summary = summarize(run, workers)
    print_demo_summary(summary, home, run.run_id)
    if compare:
        with Progress(TextColumn("baseline, one process"), BarColumn(), TimeElapsedColumn()) as bar:
            task = bar.add_task("baseline", total=None)

            def advanced(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            recipe = parse_recipe(demo_recipe(settings))
            base = train_baseline(recipe, summary.tokens, workers, advanced, settings.trust)
        summary.baseline = asdict(base)
        console.print(
            f"baseline: held-out loss {base.val_loss:.3f} after {base.steps} steps of batch "
            f"{base.batch_size} ({base.tokens} tokens, {base.wall_s:.0f} s); tessera: "
            f"{fmt_loss(summary.final_val_loss)} on {summary.tokens} tokens"
        )
    if json_path:
        json_path.write_text(json.dumps(asdict(summary), indent=2))
        console.print(f"summary written to {json_path}")


def print_demo_summary(summary: DemoSummary, home: Path, run_id: str) -> None:
    console.print(
        f"held-out loss {fmt_loss(summary.initial_val_loss)} -> {fmt_loss(summary.final_val_loss)} "
        f"nats/byte in {summary.wall_s:.0f} s; "
        f"{summary.bytes_up / 1e6:.1f} MB up, {summary.bytes_down / 1e6:.1f} MB down in total"
    )
    console.print(
        f"run data, versions and worker logs: {home.resolve()} (database hub.sqlite, blobs/, runs/{run_id}/)"
    )
    console.print("see it again with `tessera status`; generate text with `tessera sample`")
