"""`tessera worker`: lease, train and upload on this machine until the run ends, telling its
owner what it does: a progress bar of each round's inner steps on a terminal (``BarReporter``),
plain lines otherwise (``LineReporter``: a service's log file or journal)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from tessera.cli.app import (
    HOME,
    DataRootOpt,
    HolidayOpt,
    HubUrl,
    TokenOpt,
    TrustOpt,
    WindowOpt,
    app,
    console,
    err_console,
    setup_logging,
)
from tessera.task import configure_torch

if TYPE_CHECKING:
    from tessera.api.messages import ContributionReply, PoolJoinRequest
    from tessera.core.inner import InnerResult
    from tessera.trust import Trust
    from tessera.worker.session import Step, WorkerSettings, WorkerSummary


@app.command()
def worker(
    hub_url: HubUrl,
    token: TokenOpt,
    run: Annotated[
        str | None,
        typer.Option(
            "--run", "--run-id", envvar="TESSERA_RUN", help="Work on this run only (default: serve the pool)"
        ),
    ] = None,
    data: Annotated[str | None, typer.Option(help="Folder of your own text files to train on")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Where the worker keeps identity and blobs")] = None,
    name: str = "worker",
    module: Annotated[
        str | None, typer.Option(help="Of a modular run: the module to train (default: the hub picks)")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads")] = None,
    verbose: bool = True,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the worker's summary as JSON")
    ] = None,
    trust: TrustOpt = None,
    data_root: DataRootOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the code the run would execute here, then stop")
    ] = False,
    progress_every: Annotated[
        float, typer.Option(help="Seconds between progress lines when the output is not a terminal")
    ] = 10.0,
    kind: Annotated[
        str, typer.Option(help="In the pool: what kind of node this is (as pledges name it)")
    ] = "cpu",
    window: WindowOpt = None,
    holiday: HolidayOpt = None,
    collective: Annotated[
        str | None, typer.Option(help="In the pool: serve only this collective's runs")
    ] = None,
    pledge: Annotated[
        str | None, typer.Option(help="In the pool: the nodes pledge this worker is one of")
    ] = None,
) -> None:
    """Lease, train, upload until the run ends; without --run, serve the pool: the hub moves the
    worker from run to run by fair share, within its --window. Ctrl-C stops; running it again
    resumes. With --window (or --collective, --pledge) a --run worker is a pool worker pinned to
    that run, so the hub keeps it to its windows.

    Before joining, the worker shows the code the run executes here and refuses factories you do
    not trust (tessera's own are; add others with --trust) and recipe data folders outside your
    --data-root. Under torchrun the whole group is one worker: all ranks train with DDP, rank 0
    talks to the hub."""
    from tessera.api.client import HubClient
    from tessera.api.messages import PoolJoinRequest
    from tessera.errors import ConfigError
    from tessera.trust import Trust
    from tessera.worker.group import Group, GroupWorkLoop, follow, in_torchrun
    from tessera.worker.loop import WorkLoop
    from tessera.worker.session import WorkerSettings

    setup_logging(verbose)
    configure_torch(threads)
    trusted = Trust.of(trust or [], data_root or [])
    if dry_run:
        if run is None:
            raise ConfigError("--dry-run shows one run's code: give --run")
        show_run_code(hub_url, token, run, trusted, data)
        return
    reporter = reporter_for(err_console, progress_every)
    offer = PoolJoinRequest(
        name=name, kind=kind, windows=window or [], holidays=holiday or [], pinned_run_id=run,
        collective=collective, pledge_id=pledge,
    )  # fmt: skip
    if run is None or offer.windows or collective or pledge:
        serve_pool(hub_url, token, offer, WorkerSettings(
            state_dir=state_dir or HOME / "workers" / f"pool-{name}", name=name, data_path=data, trust=trusted
        ), reporter)  # fmt: skip
        return
    state = state_dir or HOME / "workers" / f"{run}-{name}"
    group = Group() if in_torchrun() else None
    ranks = group.world_size if group is not None else 1
    settings = WorkerSettings(
        state_dir=state, name=name, data_path=data, module=module, trust=trusted, ranks=ranks
    )
    if group is not None and group.rank > 0:
        follow(group, data, trusted)
        group.close()
        return
    reporter.phase(f"connecting to the hub at {hub_url} (run {run})")
    client = HubClient.connect(hub_url, token, run_id=run)
    try:
        if group is None:
            loop = WorkLoop(client, settings, reporter)
        else:
            loop = GroupWorkLoop(client, settings, group)
        summary = loop.run()
    finally:
        reporter.close()
        client.close()
        if group is not None:
            group.close()
    print_summary(summary, json_path)


def serve_pool(
    hub_url: str,
    token: str,
    offer: PoolJoinRequest,
    settings: WorkerSettings,
    reporter: BarReporter | LineReporter,
) -> None:
    """Serve the pool until Ctrl-C, one run at a time (not under torchrun)."""
    from tessera.api.client import HubClient
    from tessera.errors import ConfigError
    from tessera.worker.group import in_torchrun
    from tessera.worker.pool import PoolLoop

    if in_torchrun():
        raise ConfigError("a torchrun group works on one run: give --run (without --window)")
    reporter.phase(f"connecting to the hub at {hub_url} to serve the pool")
    client = HubClient.connect(hub_url, token)
    try:
        PoolLoop(client, settings, offer, reporter).run()
    finally:
        reporter.close()
        client.close()


def print_summary(summary: WorkerSummary, json_path: Path | None) -> None:
    """What the worker did, on stdout, and as JSON in ``json_path`` if given."""
    accepted = sum(c.status == "accepted" for c in summary.contributions)
    console.print(
        f"run finished: {accepted}/{len(summary.contributions)} contributions accepted, "
        f"{summary.bytes_up / 1e6:.1f} MB up, {summary.bytes_down / 1e6:.1f} MB down, "
        f"computing {summary.utilization:.0%} of {summary.wall_s:.0f} s",
        soft_wrap=True,
    )
    if json_path is not None:
        report = {
            "contributions": len(summary.contributions),
            "accepted": accepted,
            "bytes_up": summary.bytes_up,
            "bytes_down": summary.bytes_down,
            "compute_s": summary.compute_s,
            "wall_s": summary.wall_s,
            "started_at": summary.started_at,
            "utilization": summary.utilization,
        }
        json_path.write_text(json.dumps(report, indent=2))


def show_run_code(hub_url: str, token: str, run_id: str, trust: Trust, data: str | None) -> None:
    """Print what the run's recipe would import, call and read on this machine; exit code 1 if
    this machine does not trust all of it."""
    from tessera.api.client import HubClient
    from tessera.recipe import parse_recipe
    from tessera.task import run_code

    with HubClient.connect(hub_url, token) as client:
        recipe = parse_recipe(client.status(run_id).recipe)
    code = run_code(recipe, trust)
    for c in code:
        console.print(f"{c.role}: {c.spec} ({c.origin or '[red]not trusted here[/red]'})", soft_wrap=True)
    console.print(f"data read from: {data or recipe.data.path or 'the data source default'}", soft_wrap=True)
    for c in code:
        trust.require(c.spec, c.role)
    if data is None and recipe.data.path is not None:
        trust.data_path(recipe.data.path)


def reporter_for(err: Console, every_s: float) -> BarReporter | LineReporter:
    """A progress bar when ``err`` is a terminal, else plain lines (no ANSI codes) on it."""
    return BarReporter(err) if err.is_terminal else LineReporter(err.file, every_s)


def duration(seconds: float) -> str:
    """``seconds`` for people: 42 s, 3 min 20 s, 2 h 5 min."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def step_line(step: Step) -> str:
    return (
        f"round {step.round}: step {step.done}/{step.total}, {step.tokens_per_s:,.0f} tokens/s, "
        f"train loss {step.loss:.4f}, round's steps done in {duration(step.eta_s)}"
    )


class LineReporter:
    """Plain, timestamped lines: each phase, each contribution, and where the inner steps stand
    every ``every_s`` seconds (``clock``: monotonic seconds)."""

    def __init__(
        self, out: IO[str], every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.out = out
        self.every_s = every_s
        self.clock = clock
        self.last = clock()

    def line(self, text: str) -> None:
        self.out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        self.out.flush()
        self.last = self.clock()

    def phase(self, text: str) -> None:
        self.line(text)

    def step(self, step: Step) -> None:
        if self.clock() - self.last >= self.every_s:
            self.line(step_line(step))

    def contribution(self, reply: ContributionReply, result: InnerResult) -> None:
        from tessera.worker.session import contribution_line

        self.line(contribution_line(reply, result))

    def close(self) -> None:
        """Nothing to tear down."""


class BarReporter:
    """A rich progress bar of the current round's inner steps (steps, tokens/s, train loss, time
    to the round's last step), with each phase and contribution printed above it."""

    def __init__(self, err: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps, {task.fields[speed]} tokens/s, train loss {task.fields[loss]}"),
            TextColumn("{task.fields[eta]} to go"),
            console=err,
        )
        self.task: TaskID | None = None

    def phase(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def step(self, step: Step) -> None:
        first = self.task is None
        if self.task is None:
            self.task = self.progress.add_task("", total=step.total, speed="", loss="", eta="")
        self.progress.update(
            self.task,
            description=f"round {step.round}",
            completed=step.done,
            total=step.total,
            speed=f"{step.tokens_per_s:,.0f}",
            loss=f"{step.loss:.4f}",
            eta=duration(step.eta_s),
        )
        if first:  # the bar appears with the first step
            self.progress.start()

    def contribution(self, reply: ContributionReply, result: InnerResult) -> None:
        from tessera.worker.session import contribution_line

        self.phase(contribution_line(reply, result))

    def close(self) -> None:
        self.progress.stop()
