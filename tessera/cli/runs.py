"""`tessera create-run` and `tessera merge`: the commands that change a hub's runs (``--json``:
what they print as one JSON object, for scripts)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tessera.cli.app import DEFAULT_HUB_URL, HubUrl, JsonFlag, TokenOpt, app, console, print_json
from tessera.cli.tables import fmt_loss
from tessera.errors import TesseraError


@app.command("create-run")
def create_run(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file")],
    token: TokenOpt,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="A plan from `tessera plan`: per-worker inner steps")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a run on a hub from a recipe; you become its owner."""
    from tessera.api.client import HubClient
    from tessera.cli.plan import read_plan
    from tessera.recipe import load_recipe, with_plan

    load_recipe(recipe)  # fail here, with the file's name, before asking the hub
    text = recipe.read_text()
    if plan is not None:
        text = with_plan(text, *read_plan(plan))
    with HubClient.connect(hub_url, token) as client:
        reply = client.create_run(text)
    join = f"tessera worker --hub {hub_url} --token THEIR_TOKEN --run {reply.run_id}"
    if as_json:
        print_json({"run_id": reply.run_id, "join": join})
        return
    console.print(f"run: {reply.run_id}", soft_wrap=True)
    console.print(f"providers join with: {join}", soft_wrap=True)


@app.command()
def merge(
    inputs: Annotated[list[str], typer.Argument(help="Modules to merge (trained from one base)")],
    into: Annotated[str, typer.Option(help="The module that gets the merged version")],
    run: Annotated[str, typer.Option("--run", help="The modular run")],
    token: TokenOpt,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    method: Annotated[str, typer.Option(help="average | task_arithmetic | ties")] = "ties",
    weight: Annotated[list[float] | None, typer.Option(help="One per input (repeat); default equal")] = None,
    scale: Annotated[float, typer.Option(help="Share of the merged task vector added")] = 1.0,
    density: Annotated[float, typer.Option(help="TIES: share of each task vector kept")] = 0.2,
) -> None:
    """Merge modules into one, as a validated step: kept only if held-out loss does not rise."""
    from pydantic import ValidationError

    from tessera.api.client import HubClient
    from tessera.api.messages import MergeRequest

    fields = {"target": into, "inputs": inputs, "method": method, "weights": weight or [], "scale": scale}
    try:
        request = MergeRequest.model_validate({**fields, "density": density})
    except ValidationError as exc:
        raise TesseraError(f"merge options: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from exc
    with HubClient.connect(hub_url, token, retry_s=5.0) as client:
        reply = client.merge(run, request)
    after = f"{reply.val_loss_after:.4f}"
    console.print(
        f"merge {reply.merge_id} into {reply.target}: [bold]{reply.status}[/bold], held-out loss "
        f"{fmt_loss(reply.val_loss_before)} -> {after}"
        + (f", version {reply.version.number}" if reply.version else f" ({reply.reason})")
    )
