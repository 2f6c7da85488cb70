"""`tessera data add | list | show | versions | descendants | get | derive | withdraw` and
`tessera access explain | revoke | restore`: the commons' datasets as a provider handles them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tessera.cli.app import DEFAULT_HUB_URL, HOME, HubUrl, JsonFlag, TokenOpt, app, console, print_json

if TYPE_CHECKING:
    from tessera.api.commons import AccessExplanation, DatasetInfo
    from tessera.worker.datasets import Terms

data_app = typer.Typer(no_args_is_help=True, help="Datasets: register, derive, read and withdraw versions.")
access_app = typer.Typer(no_args_is_help=True, help="Who may read a dataset version, and why.")
app.add_typer(data_app, name="data")
app.add_typer(access_app, name="access")

Id = Annotated[str, typer.Argument(help="A dataset version's id (its Merkle root)")]
Name = Annotated[str, typer.Option("--name", help="The dataset's name (versions are numbered per name)")]
Licence = Annotated[str, typer.Option("--licence", help="An SPDX id, e.g. CC-BY-4.0, MIT, CC-BY-NC-4.0")]
VisibilityOpt = Annotated[
    str, typer.Option("--visibility", help="public | collective | contributors | private")
]
CollectiveOpt = Annotated[
    str | None, typer.Option("--collective", help="The collective (visibility collective)")
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option("--threshold", help="PFLOP of credited compute that earns access (contributors)"),
]
ThresholdRunOpt = Annotated[
    str | None,
    typer.Option("--threshold-run", help="Count only compute to this run (default: all your runs)"),
]
DescriptionOpt = Annotated[str, typer.Option("--description", help="What the data is")]
CACHE = HOME / "datasets"


def terms(
    name: str,
    licence: str,
    visibility: str,
    description: str,
    collective: str | None,
    threshold: float | None,
    threshold_run: str | None,
) -> Terms:
    from tessera.worker.datasets import Terms

    return Terms(name, licence, visibility, description, collective, threshold, threshold_run)


def describe(info: DatasetInfo) -> str:
    state = "ready" if info.state == "ready" else f"uploading ({len(info.missing)} files missing)"
    line = (
        f"{info.name} v{info.number} {info.dataset_id}\n  owner {info.owner}, {info.visibility}, "
        f"{info.licence}, {info.file_count} files, {info.nbytes} bytes, {state}"
    )
    if info.derivation is not None:
        d = info.derivation
        line += (
            f"\n  derived by {d.transform} {json.dumps(d.params)} from {', '.join(i[:16] for i in d.inputs)}"
        )
    if info.withdrawn_at is not None:
        line += f"\n  WITHDRAWN: {info.withdrawn_reason}"
    if info.tainted_by:
        line += f"\n  derives from withdrawn data: {', '.join(i[:16] for i in info.tainted_by)}"
    return line


def show_info(info: DatasetInfo, as_json: bool) -> None:
    if as_json:
        print_json(info.model_dump())
    else:
        console.print(describe(info), soft_wrap=True)


def show_infos(infos: list[DatasetInfo], as_json: bool, title: str) -> None:
    if as_json:
        print_json([i.model_dump() for i in infos])
        return
    table = Table(title=title, title_justify="left")
    for column in ("id", "name", "v", "owner", "visibility", "licence", "files", "state"):
        table.add_column(column)
    for i in infos:
        state = "withdrawn" if i.withdrawn_at else ("marked" if i.tainted_by else i.state)
        table.add_row(
            i.dataset_id[:16],
            i.name,
            str(i.number),
            i.owner,
            i.visibility,
            i.licence,
            str(i.file_count),
            state,
        )
    console.print(table)


@data_app.command("add")
def add(
    path: Annotated[Path, typer.Argument(help="A folder (or one file) of data", exists=True)],
    name: Name,
    licence: Licence,
    token: TokenOpt,
    visibility: VisibilityOpt = "private",
    description: DescriptionOpt = "",
    collective: CollectiveOpt = None,
    threshold: ThresholdOpt = None,
    threshold_run: ThresholdRunOpt = None,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    as_json: JsonFlag = False,
) -> None:
    """Register a folder as a dataset version and upload the files the hub lacks.

    Run it again to resume an upload. Private data is only hashed here: the hub gets its id and
    statistics."""
    from tessera.api.client import HubClient
    from tessera.worker.datasets import add_folder

    chosen = terms(name, licence, visibility, description, collective, threshold, threshold_run)
    with HubClient.connect(hub_url, token) as client:
        info = add_folder(client, path, chosen)
    show_info(info, as_json)


@data_app.command("list")
def list_(
    token: TokenOpt,
    owner: Annotated[str | None, typer.Option(help="Only this owner's")] = None,
    name: Annotated[str | None, typer.Option(help="Only versions of this name")] = None,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    as_json: JsonFlag = False,
) -> None:
    """The dataset versions you may read, newest first."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        show_infos(client.datasets(owner, name), as_json, "datasets")


@data_app.command("show")
def show(
    dataset_id: Id, token: TokenOpt, hub_url: HubUrl = DEFAULT_HUB_URL, as_json: JsonFlag = False
) -> None:
    """One version: its terms, files, derivation, and whether it or its inputs were withdrawn."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        info = client.dataset(dataset_id)
        below = client.dataset_descendants(dataset_id)
    if as_json:
        print_json({**info.model_dump(), "descendants": [d.dataset_id for d in below]})
        return
    console.print(describe(info), soft_wrap=True)
    if info.description:
        console.print(f"  {info.description}", soft_wrap=True)
    if below:
        console.print(
            f"  {len(below)} versions derive from it: " + ", ".join(d.dataset_id[:16] for d in below)
        )


@data_app.command("versions")
def versions(
    dataset_id: Id, token: TokenOpt, hub_url: HubUrl = DEFAULT_HUB_URL, as_json: JsonFlag = False
) -> None:
    """Every version of the same owner and name, oldest first."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        show_infos(client.dataset_versions(dataset_id), as_json, "versions")


@data_app.command("get")
def get(
    dataset_id: Id,
    out: Annotated[Path, typer.Option("--out", help="Write the files under this folder")],
    token: TokenOpt,
    cache: Annotated[Path, typer.Option(help="Keep files here by content")] = CACHE,
    hub_url: HubUrl = DEFAULT_HUB_URL,
) -> None:
    """Download a version's files (each checked against its sha256; cached by content)."""
    from tessera.api.client import HubClient
    from tessera.worker.datasets import DatasetCache, write_folder

    with HubClient.connect(hub_url, token) as client:
        contents = DatasetCache(cache).fetch(client, dataset_id)
    write_folder(contents, out)
    console.print(f"wrote {len(contents)} files of {dataset_id[:16]} under {out}")


def parse_params(values: list[str], annotations: Path | None) -> dict[str, Any]:
    """``key=value`` pairs (the value as JSON if it parses, else text); repeated keys: a list."""
    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param {item!r}: write key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in params:
            params[key] = [*([params[key]] if not isinstance(params[key], list) else params[key]), value]
        else:
            params[key] = value
    if annotations is not None:
        params["annotations"] = annotations.read_text()
    return params


@data_app.command("derive")
def derive_(
    transform: Annotated[str, typer.Argument(help="filter | dedupe | split | annotate")],
    inputs: Annotated[list[str], typer.Option("--from", help="An input version's id (repeat)")],
    name: Name,
    licence: Licence,
    token: TokenOpt,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="key=value (repeat), e.g. include=*.py")
    ] = None,
    annotations: Annotated[
        Path | None,
        typer.Option(help='annotate: JSON Lines of {"describes": path, "text": ...}', exists=True),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Also write the derived files here (private: required)")
    ] = None,
    visibility: VisibilityOpt = "private",
    description: DescriptionOpt = "",
    collective: CollectiveOpt = None,
    threshold: ThresholdOpt = None,
    threshold_run: ThresholdRunOpt = None,
    cache: Annotated[Path, typer.Option(help="Keep input files here by content")] = CACHE,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    as_json: JsonFlag = False,
) -> None:
    """Derive a version from others with a built-in transform.

    It is recorded with its inputs, parameters and code version; a deterministic transform re-run
    gives the same id."""
    from tessera.api.client import HubClient
    from tessera.worker.datasets import DatasetCache, derive, write_folder

    if visibility == "private" and out is None:
        raise typer.BadParameter("a private derived version's files stay with you: give --out FOLDER")
    chosen = terms(name, licence, visibility, description, collective, threshold, threshold_run)
    params = parse_params(param or [], annotations)
    with HubClient.connect(hub_url, token) as client:
        info, files = derive(client, DatasetCache(cache), inputs, transform, params, chosen)
    if out is not None:
        write_folder(files, out)
    show_info(info, as_json)


@data_app.command("withdraw")
def withdraw(
    dataset_id: Id,
    reason: Annotated[str, typer.Option(help="Why (shown to the runs that train on it)")],
    token: TokenOpt,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    as_json: JsonFlag = False,
) -> None:
    """Withdraw your version: no new lease trains on it.

    Every version derived from it, and the runs that train on them, are marked."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        reply = client.withdraw_dataset(dataset_id, reason)
    if as_json:
        print_json(reply.model_dump())
        return
    console.print(
        f"withdrew {dataset_id[:16]}: {reply.descendants_marked} derived versions marked, "
        f"{len(reply.runs_told)} runs told",
        soft_wrap=True,
    )


def show_explanation(e: AccessExplanation, as_json: bool) -> None:
    if as_json:
        print_json(e.model_dump())
        return
    console.print(
        f"{e.provider} {'may' if e.granted else 'may not'} read {e.dataset_id[:16]}: {e.reason}",
        soft_wrap=True,
    )


@access_app.command("explain")
def explain(
    dataset_id: Id,
    provider: Annotated[str, typer.Option("--provider", help="The provider asked about (name or id)")],
    token: TokenOpt,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    as_json: JsonFlag = False,
) -> None:
    """Whether a provider may read a version, and the rule that decides it."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        show_explanation(client.explain_access(dataset_id, provider), as_json)


@access_app.command("revoke")
def revoke(
    dataset_id: Id,
    provider: Annotated[str, typer.Option("--provider", help="Whose access (name or id)")],
    token: TokenOpt,
    reason: Annotated[str, typer.Option(help="Why")] = "",
    hub_url: HubUrl = DEFAULT_HUB_URL,
    as_json: JsonFlag = False,
) -> None:
    """Revoke a provider's access to your version, whatever it earned."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        show_explanation(client.change_access(dataset_id, provider, revoke=True, reason=reason), as_json)


@access_app.command("restore")
def restore(
    dataset_id: Id,
    provider: Annotated[str, typer.Option("--provider", help="Whose access (name or id)")],
    token: TokenOpt,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    as_json: JsonFlag = False,
) -> None:
    """Lift a revocation: the provider's access follows the version's rules again."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        show_explanation(client.change_access(dataset_id, provider, revoke=False), as_json)
