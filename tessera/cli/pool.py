"""`tessera queue`, `tessera pledge create | list | cancel`, `tessera pause | resume`: the pool
as a provider sees it, what it promises the commons, and its runs' place in the pool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tessera.cli.app import (
    DEFAULT_HUB_URL,
    HolidayOpt,
    HubUrl,
    JsonFlag,
    TokenOpt,
    WindowOpt,
    app,
    console,
    print_json,
)

if TYPE_CHECKING:
    from tessera.api.messages import PledgeInfo, PledgeRequest

pledge_app = typer.Typer(no_args_is_help=True, help="Pledge compute to a run, a collective or the pool.")
app.add_typer(pledge_app, name="pledge")


@app.command()
def queue(token: TokenOpt, hub_url: HubUrl = DEFAULT_HUB_URL, as_json: JsonFlag = False) -> None:
    """The runs claiming pool workers, highest score first: their share, and why they wait."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        report = client.queue()
    if as_json:
        print_json(report.model_dump())
        return
    table = Table(title=f"pool: {report.pool_workers} workers", title_justify="left")
    for column in ("run", "owner", "score", "workers", "entitled"):
        table.add_column(column, justify="right" if column in ("score", "workers", "entitled") else "left")
    for e in report.runs:
        run = f"{e.name} {e.run_id[:8]}"
        table.add_row(run, e.owner, f"{e.score:+.1f}", str(e.workers), f"{e.entitled:.1f}")
    console.print(table)
    for e in report.runs:
        console.print(f"{e.run_id[:8]} {e.reason}", soft_wrap=True)


@pledge_app.command("create")
def pledge_create(
    token: TokenOpt,
    to: Annotated[str, typer.Option(help="pool | run:RUN_ID | collective:NAME")] = "pool",
    nodes: Annotated[int | None, typer.Option(help="Pledge this many of your pool workers")] = None,
    kind: Annotated[str | None, typer.Option(help="Of this kind of node (as workers declare --kind)")] = None,
    steps: Annotated[int | None, typer.Option(help="Pledge a budget of inner steps")] = None,
    pflop: Annotated[float | None, typer.Option(help="Pledge a budget of PFLOP")] = None,
    window: WindowOpt = None,
    holiday: HolidayOpt = None,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    as_json: JsonFlag = False,
) -> None:
    """Pledge nodes (--nodes, optionally --kind and --window) or a budget (--steps or --pflop)."""
    from tessera.api.client import HubClient

    request = pledge_request(to, nodes, kind, steps, pflop, window or [], holiday or [])
    with HubClient.connect(hub_url, token) as client:
        info = client.pledge(request)
    if as_json:
        print_json(info.model_dump())
        return
    console.print(f"pledge {info.pledge_id}: {what(info)}", soft_wrap=True)


@pledge_app.command("list")
def pledge_list(token: TokenOpt, hub_url: HubUrl = DEFAULT_HUB_URL, as_json: JsonFlag = False) -> None:
    """Your pledges (a hub admin: everyone's) and what each delivered."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        pledges = client.pledges()
    if as_json:
        print_json([p.model_dump() for p in pledges])
        return
    table = Table()
    for column in ("pledge", "provider", "what", "status", "delivered"):
        table.add_column(column)
    for p in pledges:
        delivered = f"{p.delivered_steps} steps, {p.delivered_pflop:.3g} PFLOP"
        table.add_row(p.pledge_id[:8], p.provider, what(p), p.status, delivered)
    console.print(table)


@pledge_app.command("cancel")
def pledge_cancel(
    pledge_id: Annotated[str, typer.Argument(help="The pledge's id")],
    token: TokenOpt,
    hub_url: HubUrl = DEFAULT_HUB_URL,
) -> None:
    """End a pledge (it stays on record); its workers serve the pool."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        info = client.cancel_pledge(pledge_id)
    console.print(f"pledge {info.pledge_id}: {info.status}")


@app.command()
def pause(
    run: Annotated[str, typer.Argument(help="Run id")], token: TokenOpt, hub_url: HubUrl = DEFAULT_HUB_URL
) -> None:
    """Pause your run: no new leases; pool workers move to other runs."""
    set_paused(run, token, hub_url, True)


@app.command()
def resume(
    run: Annotated[str, typer.Argument(help="Run id")], token: TokenOpt, hub_url: HubUrl = DEFAULT_HUB_URL
) -> None:
    """Resume a paused run."""
    set_paused(run, token, hub_url, False)


def set_paused(run: str, token: str, hub_url: str, paused: bool) -> None:
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        status = client.pause(run, paused)
    console.print(f"run {status.run_id}: {'paused' if status.paused else 'active'}")


def pledge_request(
    to: str,
    nodes: int | None,
    kind: str | None,
    steps: int | None,
    pflop: float | None,
    windows: list[str],
    holidays: list[str],
) -> PledgeRequest:
    """The request for ``--to pool | run:ID | collective:NAME`` and the other options."""
    from pydantic import ValidationError

    from tessera.api.messages import PledgeRequest
    from tessera.errors import ConfigError

    target, _, target_id = to.partition(":")
    if target not in ("pool", "run", "collective") or (target == "pool") == bool(target_id):
        raise ConfigError(f"--to {to!r}: write pool, run:RUN_ID or collective:NAME")
    fields = {"target": target, "target_id": target_id or None, "nodes": nodes, "worker_kind": kind}
    try:
        return PledgeRequest.model_validate(
            {**fields, "steps": steps, "pflop": pflop, "windows": windows, "holidays": holidays}
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(f"pledge option {error['loc'][0]}: {error['msg']}") from exc


def what(p: PledgeInfo) -> str:
    """A pledge in words: '2 cpu nodes to run 1a2b3c4d (22:00-07:00 UTC)'."""
    if p.kind == "nodes":
        amount = f"{p.nodes} {p.worker_kind + ' ' if p.worker_kind else ''}nodes"
    else:
        amount = f"{p.steps} inner steps" if p.steps else f"{p.pflop:g} PFLOP"
    target = "the pool" if p.target == "pool" else f"{p.target} {(p.target_id or '')[:8]}"
    return f"{amount} to {target}" + (f" ({'; '.join(p.windows)})" if p.windows else "")
