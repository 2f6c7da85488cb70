"""`tessera worker`: lease, train and upload on this machine until the run ends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tessera.cli.app import HOME, DataRootOpt, HubUrl, TokenOpt, TrustOpt, app, console, setup_logging
from tessera.task import configure_torch

if TYPE_CHECKING:
    from tessera.trust import Trust


@app.command()
def worker(
    hub_url: HubUrl,
    token: TokenOpt,
    run: Annotated[
        str, typer.Option("--run", "--run-id", envvar="TESSERA_RUN", help="Run id (--run-id under torchrun)")
    ],
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
) -> None:
    """Lease, train, upload until the run ends. Ctrl-C stops; running it again resumes.

    Before joining, the worker shows the code the run executes here and refuses factories you do
    not trust (tessera's own are; add others with --trust) and recipe data folders outside your
    --data-root. Under torchrun the whole group is one worker: all ranks train with DDP, rank 0
    talks to the hub."""
    from tessera.api.client import HubClient
    from tessera.trust import Trust
    from tessera.worker.group import Group, GroupWorkLoop, follow, in_torchrun
    from tessera.worker.loop import WorkLoop
    from tessera.worker.session import WorkerSettings

    setup_logging(verbose)
    configure_torch(threads)
    trusted = Trust.of(trust or [], data_root or [])
    if dry_run:
        show_run_code(hub_url, token, run, trusted, data)
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
    client = HubClient.connect(hub_url, token, run_id=run)
    try:
        loop = WorkLoop(client, settings) if group is None else GroupWorkLoop(client, settings, group)
        summary = loop.run()
    finally:
        client.close()
        if group is not None:
            group.close()
    accepted = sum(c.status == "accepted" for c in summary.contributions)
    console.print(
        f"run finished: {accepted}/{len(summary.contributions)} contributions accepted, "
        f"{summary.bytes_up / 1e6:.1f} MB up, {summary.bytes_down / 1e6:.1f} MB down, "
        f"computing {summary.utilization:.0%} of {summary.wall_s:.0f} s"
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
