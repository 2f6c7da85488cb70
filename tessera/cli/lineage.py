"""`tessera lineage`: what produced a run's version, as a tree (or JSON, or W3C PROV-JSON): the
dataset versions it trained on and what they derive from, the tokens taken from each, whose
compute, withdrawn data, and the version a forked run started from."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.tree import Tree

from tessera.cli.app import HOME, HomeOpt, HubOpt, JsonFlag, ReadTokenOpt, app, console, print_json
from tessera.cli.read import pick_run, reader

if TYPE_CHECKING:
    from tessera.api.commons import DatasetUse, RunLineage


def dataset_label(d: DatasetUse) -> str:
    name = d.name or "(private)"
    owner = f" by {d.owner}" if d.owner else ""
    flags = (
        " [red]WITHDRAWN[/red]"
        if d.withdrawn
        else (" [red]derives from withdrawn data[/red]" if d.tainted_by else "")
    )
    made = f", {d.transform} of {', '.join(i[:12] for i in d.derived_from)}" if d.derived_from else ""
    return f"{name} {d.dataset_id[:16]}{owner}, {d.licence}, {d.visibility}{made}{flags}"


def trained_on(dataset_id: str | None) -> str:
    return dataset_id[:16] if dataset_id else "the recipe's data"


def tree_of(lineage: RunLineage) -> Tree:
    tree = Tree(f"[bold]{lineage.name}[/bold] version {lineage.version} (run {lineage.run_id})")
    data = tree.add("datasets")
    for d in lineage.datasets:
        if d.weight is not None:
            data.add(f"{dataset_label(d)}: weight {d.weight:g}, {d.tokens} tokens")
    above = [d for d in lineage.datasets if d.weight is None]
    if above:
        ancestors = tree.add("derived from")
        for d in above:
            ancestors.add(dataset_label(d))
    compute = tree.add("compute")
    for c in lineage.compute:
        compute.add(f"{c.provider}: {c.tokens} tokens ({c.pflop:.4g} PFLOP) on {trained_on(c.dataset_id)}")
    for mark in lineage.marks:
        tree.add(f"[red]{mark}[/red]")
    if lineage.forked_from is not None:
        tree.add("forked from").add(tree_of(lineage.forked_from))
    return tree


@app.command()
def lineage(
    hub_url: HubOpt = None,
    home: HomeOpt = HOME / "demo",
    run: Annotated[str | None, typer.Argument(help="Run id (default: the newest run)")] = None,
    version: Annotated[int | None, typer.Option(help="Version number (default: the latest)")] = None,
    prov: Annotated[Path | None, typer.Option(help="Also write it as W3C PROV-JSON to this file")] = None,
    token: ReadTokenOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """What produced a run's version: datasets, tokens from each, whose compute, forks."""
    from tessera.export import prov_document

    with closing(reader(hub_url, token, home)) as source:
        found = source.lineage(pick_run(source, run), version)
    if prov is not None:
        prov.write_text(json.dumps(prov_document(found), indent=2) + "\n")
    if as_json:
        print_json(found.model_dump(mode="json"))
        return
    console.print(tree_of(found))
    if prov is not None:
        console.print(f"wrote {prov}")
