"""`tessera demo`: the reference model, or a recipe of the user's (``--recipe``), trained by an
embedded hub and local worker processes, with a progress bar; options override the recipe's
common settings (outer optimizer, codec, overlap, rounds, inner steps)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tessera.api.messages import RunStatus
from tessera.cli.app import HOME, TrustOpt, app, console, setup_logging
from tessera.cli.tables import fmt_loss, print_ledger, print_run
from tessera.errors import TesseraError

if TYPE_CHECKING:
    from tessera.demo import BaselineResult, DemoRun, DemoSettings, DemoSummary, Overrides


@app.command()
def demo(
    workers: Annotated[
        int | None, typer.Option(help="Local worker processes [default: 4, or the recipe's quorum]")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds [default: 12, or the recipe's]")] = None,
    inner_steps: Annotated[
        int | None, typer.Option(help="Inner steps H per round [default: 100, or the recipe's]")
    ] = None,
    home: Annotated[Path, typer.Option(help="Folder for the hub's database, blobs and logs")] = HOME / "demo",
    data: Annotated[Path | None, typer.Option(help="A folder of text files instead of the stdlib")] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Train this recipe instead of the demo's (its [data] path is trusted)")
    ] = None,
    outer: Annotated[str | None, typer.Option(help="Outer optimizer: nesterov or average")] = None,
    outer_lr: Annotated[float | None, typer.Option(help="Outer learning rate")] = None,
    momentum: Annotated[float | None, typer.Option(help="Outer (Nesterov) momentum")] = None,
    codec: Annotated[
        str | None,
        typer.Option(help="Upload codec: fp32, bf16, fp16, int8, int4, int3, int2, sign or topk<percent>"),
    ] = None,
    overlap: Annotated[
        bool | None, typer.Option("--overlap/--no-overlap", help="Overlap communication with training")
    ] = None,
    trust: TrustOpt = None,
    compare: Annotated[bool, typer.Option(help="Also train a single-process baseline")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write a JSON summary here")] = None,
    verbose: bool = False,
) -> None:
    """Train the reference model (or --recipe) with an embedded hub and local worker processes.

    --rounds, --inner-steps, --outer, --outer-lr, --momentum, --codec and --overlap override the
    recipe's settings."""
    from tessera.demo import Overrides, run_recipe, summarize
    from tessera.recipe import parse_recipe

    setup_logging(verbose)
    overrides = Overrides(rounds, inner_steps, outer, outer_lr, momentum, codec, overlap)
    settings = demo_settings(home, workers, data, recipe, overrides, tuple(trust or ()))
    run = train_demo(settings, parse_recipe(run_recipe(settings)).run.rounds)
    print_run(run.status, run.rounds)
    print_ledger(run.ledger)
    summary = summarize(run, settings.workers)
    print_demo_summary(summary, home, run.run_id, own_recipe=recipe is None)
    if compare:
        summary.baseline = asdict(compare_baseline(settings, summary))
    if json_path:
        json_path.write_text(json.dumps(asdict(summary), indent=2))
        console.print(f"summary written to {json_path}")


def demo_settings(
    home: Path,
    workers: int | None,
    data: Path | None,
    recipe: Path | None,
    overrides: Overrides,
    factories: tuple[str, ...],
) -> DemoSettings:
    """The demo's own recipe, sized by --workers, --rounds and --inner-steps; or the recipe given,
    trained by as many workers as its quorum unless --workers says otherwise."""
    from tessera.demo import DemoSettings
    from tessera.recipe import load_recipe

    base = DemoSettings(home=home, data_path=data, factories=factories)
    if recipe is None:
        return replace(
            base,
            workers=base.workers if workers is None else workers,
            rounds=base.rounds if overrides.rounds is None else overrides.rounds,
            inner_steps=base.inner_steps if overrides.inner_steps is None else overrides.inner_steps,
            overrides=replace(overrides, rounds=None, inner_steps=None),
        )
    quorum = load_recipe(recipe).run.min_quorum
    if workers is not None and workers < quorum:
        raise TesseraError(
            f"{recipe} has run.quorum = {quorum}: its rounds close only with {quorum} contributions; "
            f"start at least as many workers (--workers {quorum}) or lower run.quorum"
        )
    count = quorum if workers is None else workers
    return replace(base, workers=count, recipe=recipe.read_text(), overrides=overrides)


def train_demo(settings: DemoSettings, rounds: int) -> DemoRun:
    """The demo's run, with a progress bar of its ``rounds``."""
    from tessera.demo import run_demo

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
    )
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("starting", total=rounds)

        def started(url: str, run_id: str) -> None:
            bar.console.print(
                f"hub at {url}, run {run_id}, {settings.workers} worker processes", soft_wrap=True
            )

        def show(s: RunStatus) -> None:
            loss = fmt_loss(s.latest_version.val_loss if s.latest_version else None)
            bar.update(task, completed=s.rounds_done, description=f"held-out loss {loss}")

        return run_demo(settings, started, show)


def compare_baseline(settings: DemoSettings, run: DemoSummary) -> BaselineResult:
    """One process trained on the run's tokens, printed beside the run's result."""
    from tessera.demo import run_recipe, train_baseline
    from tessera.recipe import parse_recipe

    with Progress(TextColumn("baseline, one process"), BarColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("baseline", total=None)

        def advanced(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        recipe = parse_recipe(run_recipe(settings))
        base = train_baseline(recipe, run.tokens, settings.workers, advanced, settings.trust)
    console.print(
        f"baseline: held-out loss {base.val_loss:.3f} after {base.steps} steps of batch "
        f"{base.batch_size} ({base.tokens} tokens, {base.wall_s:.0f} s); tessera: "
        f"{fmt_loss(run.final_val_loss)} on {run.tokens} tokens"
    )
    return base


def print_demo_summary(summary: DemoSummary, home: Path, run_id: str, own_recipe: bool = True) -> None:
    """The run's result; ``own_recipe``: the demo's byte-level LM (its loss in nats per byte)."""
    unit = " nats/byte" if own_recipe else ""
    console.print(
        f"held-out loss {fmt_loss(summary.initial_val_loss)} -> {fmt_loss(summary.final_val_loss)}"
        f"{unit} in {summary.wall_s:.0f} s; "
        f"{summary.bytes_up / 1e6:.1f} MB up, {summary.bytes_down / 1e6:.1f} MB down in total"
    )
    console.print(
        f"run data, versions and worker logs: {home.resolve()} (database hub.sqlite, blobs/, runs/{run_id}/)"
    )
    sample = "; generate text with `tessera sample`" if own_recipe else ""
    console.print(f"see it again with `tessera status`{sample}")
