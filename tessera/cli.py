"""The `tessera` command. Only this module configures logging and draws progress bars.

Exit codes: 0 success; 1 a tessera error (the message says what to do); 2 usage error;
130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol

import torch
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tessera.api.messages import LedgerReport, RoundMetrics, RunStatus, VersionInfo
from tessera.errors import TesseraError
from tessera.task import configure_torch

if TYPE_CHECKING:
    from tessera.demo import DemoSummary
    from tessera.trust import Trust

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="tessera: train shared models together on pooled, loosely connected compute.",
)
console = Console()
HOME = Path(".tessera")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


# --- hub -------------------------------------------------------------------------------


TrustOpt = Annotated[
    list[str] | None,
    typer.Option("--trust", help="Also trust this factory, package.module:function (repeat)"),
]
DataRootOpt = Annotated[
    list[Path] | None,
    typer.Option("--data-root", help="A folder recipes may read their [data] path from (repeat)"),
]


@app.command()
def hub(
    home: Annotated[Path, typer.Option(help="Folder for the SQLite database and blobs")] = HOME / "hub",
    host: str = "127.0.0.1",
    port: int = 8700,
    database: Annotated[str | None, typer.Option(help="SQLAlchemy URL instead of SQLite in --home")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Hub configuration TOML: [trust], [limits], [api]")
    ] = None,
    trust: TrustOpt = None,
    data_root: DataRootOpt = None,
    threads: Annotated[int | None, typer.Option(help="torch threads for evaluation")] = None,
    verbose: bool = True,
) -> None:
    """Serve a hub over HTTP. A new hub creates its first admin; the token goes to HOME/admin.token.

    Recipes run only tessera's own factories and those you trust (--trust, or [trust] in --config)."""
    import uvicorn

    from tessera.hub.app import admin_token, create_app, open_service
    from tessera.hub.config import load_hub_config

    setup_logging(verbose)
    configure_torch(threads)
    settings = load_hub_config(config, trust or [], [str(p) for p in data_root or []])
    service = open_service(home, database, settings)
    if admin_token(service, home) is not None:
        console.print(f"admin token in {home / 'admin.token'} (create providers and tokens with it)")
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")


HubUrl = Annotated[str, typer.Option("--hub", help="Hub URL")]
TokenOpt = Annotated[str, typer.Option("--token", envvar="TESSERA_TOKEN", help="Your API token")]


@app.command("create-run")
def create_run(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML file")],
    token: TokenOpt,
    hub_url: HubUrl = "http://127.0.0.1:8700",
    plan: Annotated[
        Path | None, typer.Option("--plan", help="A plan from `tessera plan`: per-worker inner steps")
    ] = None,
) -> None:
    """Create a run on a hub from a recipe; you become its owner."""
    from tessera.api.client import HubClient
    from tessera.cli_plan import read_plan
    from tessera.recipe import load_recipe, with_plan

    load_recipe(recipe)  # fail here, with the file's name, before asking the hub
    text = recipe.read_text()
    if plan is not None:
        text = with_plan(text, *read_plan(plan))
    with HubClient.connect(hub_url, token) as client:
        reply = client.create_run(text)
    console.print(f"run: {reply.run_id}", soft_wrap=True)
    console.print(
        f"providers join with: tessera worker --hub {hub_url} --token THEIR_TOKEN --run {reply.run_id}",
        soft_wrap=True,
    )


# --- providers, collectives, tokens ----------------------------------------------------

providers_app = typer.Typer(help="Providers and collectives (hub admins).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(providers_app, name="provider")
app.add_typer(tokens_app, name="token")


@providers_app.command("create")
def provider_create(
    name: str,
    token: TokenOpt,
    hub_url: HubUrl = "http://127.0.0.1:8700",
    kind: Annotated[str, typer.Option(help="person, company, collective or sponsor")] = "person",
    admin: Annotated[bool, typer.Option("--admin", help="Make a hub admin")] = False,
) -> None:
    """Create a provider (or a collective) and print its first token."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        created = client.create_provider(name, kind, admin)
    console.print(f"{created.provider.kind} {name}: {created.provider.provider_id}", soft_wrap=True)
    console.print(f"token: {created.token}", soft_wrap=True)


@providers_app.command("add-member")
def provider_add_member(
    collective: str, member: str, token: TokenOpt, hub_url: HubUrl = "http://127.0.0.1:8700"
) -> None:
    """Add a provider to a collective (names or ids)."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        info = client.add_member(collective, member)
    console.print(f"{info.name} is in {len(info.collectives)} collective(s)")


@app.command()
def whoami(token: TokenOpt, hub_url: HubUrl = "http://127.0.0.1:8700") -> None:
    """Show the provider behind a token."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        info = client.whoami()
    console.print(f"{info.name} ({info.kind}{', hub admin' if info.is_admin else ''}), id {info.provider_id}")


@tokens_app.command("create")
def token_create(
    token: TokenOpt,
    hub_url: HubUrl = "http://127.0.0.1:8700",
    provider: Annotated[str | None, typer.Option(help="For another provider (hub admins)")] = None,
    label: str = "",
) -> None:
    """Create a new API token (for yourself, or as admin for another provider)."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        reply = client.create_token(provider or client.whoami().provider_id, label)
    console.print(f"token id: {reply.token_id}\ntoken: {reply.token}", soft_wrap=True)


@tokens_app.command("revoke")
def token_revoke(token_id: str, token: TokenOpt, hub_url: HubUrl = "http://127.0.0.1:8700") -> None:
    """Revoke a token by its id; requests with it are refused from then on."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        client.revoke_token(token_id)
    console.print(f"token {token_id} revoked")


# --- worker ----------------------------------------------------------------------------


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


# --- reading runs ----------------------------------------------------------------------


class RunReader(Protocol):
    def status(self, run_id: str) -> RunStatus: ...
    def rounds(self, run_id: str) -> list[RoundMetrics]: ...
    def version(self, run_id: str, number: int | None = None) -> VersionInfo: ...
    def blob(self, run_id: str, sha: str) -> bytes: ...
    def run_ids(self) -> list[str]: ...
    def ledger(self) -> LedgerReport: ...


class LocalReader:
    """Reads a hub's folder directly (the hub need not run); file access is full access."""

    def __init__(self, home: Path) -> None:
        from tessera.hub.app import open_service
        from tessera.hub.auth import Principal

        if not (home / "hub.sqlite").exists():
            raise TesseraError(f"no hub database in {home}; run `tessera demo` or pass --hub URL")
        self.service = open_service(home)
        self.who = Principal("local-files", "local files", True, frozenset())

    def status(self, run_id: str) -> RunStatus:
        return self.service.status(run_id, self.who)

    def rounds(self, run_id: str) -> list[RoundMetrics]:
        return self.service.rounds(run_id, self.who)

    def version(self, run_id: str, number: int | None = None) -> VersionInfo:
        return self.service.version(run_id, self.who, number)

    def blob(self, run_id: str, sha: str) -> bytes:
        return self.service.store.get(sha)

    def run_ids(self) -> list[str]:
        return self.service.run_ids(self.who)

    def ledger(self) -> LedgerReport:
        return self.service.ledger.report(self.who)


class RemoteReader:
    def __init__(self, url: str, token: str | None) -> None:
        from tessera.api.client import HubClient

        self.client = HubClient.connect(url, token, retry_s=5.0)
        self.status, self.rounds, self.version = self.client.status, self.client.rounds, self.client.version
        self.ledger = self.client.ledger

    def blob(self, run_id: str, sha: str) -> bytes:
        return self.client.blob(sha, run_id)

    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.client.runs()]


def reader(hub_url: str | None, token: str | None, home: Path) -> RunReader:
    if hub_url:
        return RemoteReader(hub_url, token)
    return LocalReader(home)


def pick_run(source: RunReader, run_id: str | None) -> str:
    if run_id:
        return run_id
    ids = source.run_ids()
    if not ids:
        raise TesseraError("no runs to show; create one with `tessera create-run`")
    return ids[-1]


HubOpt = Annotated[str | None, typer.Option("--hub", help="Hub URL (default: read --home directly)")]
HomeOpt = Annotated[Path, typer.Option(help="Hub folder to read when no --hub is given")]
RunOpt = Annotated[str | None, typer.Option("--run", help="Run id (default: the newest run)")]


@app.command()
def status(
    hub_url: HubOpt = None,
    home: HomeOpt = HOME / "demo",
    run: RunOpt = None,
    token: Annotated[str | None, typer.Option(envvar="TESSERA_TOKEN", help="API token (with --hub)")] = None,
) -> None:
    """Show a running or finished run, with metrics per round."""
    source = reader(hub_url, token, home)
    run_id = pick_run(source, run)
    print_run(source.status(run_id), source.rounds(run_id))


ExpertOpt = Annotated[
    list[str] | None,
    typer.Option("--expert", help="Experts to use (repeat; default: all, routed); others are left out"),
]


@app.command()
def sample(
    hub_url: HubOpt = None,
    home: HomeOpt = HOME / "demo",
    run: RunOpt = None,
    token: Annotated[str | None, typer.Option(envvar="TESSERA_TOKEN", help="API token (with --hub)")] = None,
    prompt: str = "def ",
    length: Annotated[int, typer.Option(help="Bytes to generate")] = 300,
    temperature: float = 0.7,
    seed: int = 0,
    expert: ExpertOpt = None,
    trust: TrustOpt = None,
) -> None:
    """Generate text from the run's latest version (of each module, for a modular run)."""
    from tessera.models.lm import ByteLM

    source = reader(hub_url, token, home)
    run_id = pick_run(source, run)
    model, _, versions = latest_model(source, run_id, expert, trust)
    if not isinstance(model, ByteLM):
        raise TesseraError(f"run {run_id} does not train a byte-level LM; sampling needs one")
    ids = torch.tensor(list(prompt.encode()), dtype=torch.long)
    out = model.generate(ids, length, temperature, torch.Generator().manual_seed(seed))
    console.print(f"[dim]run {run_id}, {versions}[/dim]")
    console.print(bytes(out.tolist()).decode("utf-8", errors="replace"), markup=False, highlight=False)


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="safetensors file to write")],
    hub_url: HubOpt = None,
    home: HomeOpt = HOME / "demo",
    run: RunOpt = None,
    token: Annotated[str | None, typer.Option(envvar="TESSERA_TOKEN", help="API token (with --hub)")] = None,
    expert: ExpertOpt = None,
    trust: TrustOpt = None,
) -> None:
    """Write the run's latest model as one safetensors file; its metadata holds the recipe, the
    versions and the experts kept (rebuild with tessera.task.assemble)."""
    from tessera.core.tensors import to_bytes
    from tessera.task import model_tensors

    source = reader(hub_url, token, home)
    run_id = pick_run(source, run)
    model, info, versions = latest_model(source, run_id, expert, trust)
    metadata = {
        "recipe": info.recipe,
        "run_id": run_id,
        "versions": versions,
        "experts": json.dumps(expert),
    }
    out.write_bytes(to_bytes(model_tensors(model), metadata))
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): run {run_id}, {versions}")


def latest_model(
    source: RunReader, run_id: str, experts: list[str] | None, trust: list[str] | None = None
) -> tuple[torch.nn.Module, RunStatus, str]:
    """The run's model from the latest version of each module it needs (modules of experts left
    out are not downloaded), the run's status, and which versions those are; built only from
    factories this machine trusts (tessera's own and ``trust``)."""
    from tessera.core.modules import assign
    from tessera.core.tensors import from_bytes
    from tessera.recipe import parse_recipe
    from tessera.task import assemble, with_experts
    from tessera.trust import Trust

    info = source.status(run_id)
    recipe = parse_recipe(info.recipe)
    trusted = Trust.of(trust or [])
    parts = [info]
    if info.modules:
        model = with_experts(recipe, experts, trusted)
        needed = set(assign(recipe.modules, model.state_dict(), every_module=False).values())
        parts = [m for m in info.modules if m.module in needed]
    tensors = []
    for part in parts:
        assert part.latest_version is not None  # set for every run that is not modular
        tensors.append(from_bytes(source.blob(part.run_id, part.latest_version.blob_sha256)))
    versions = ", ".join(
        f"{p.module or 'version'} {v.number} (held-out loss {fmt_loss(v.val_loss)})"
        for p in parts
        if (v := p.latest_version) is not None
    )
    return assemble(recipe, tensors, experts, trusted), info, versions


@app.command()
def merge(
    inputs: Annotated[list[str], typer.Argument(help="Modules to merge (trained from one base)")],
    into: Annotated[str, typer.Option(help="The module that gets the merged version")],
    run: Annotated[str, typer.Option("--run", help="The modular run")],
    token: TokenOpt,
    hub_url: HubUrl = "http://127.0.0.1:8700",
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


@app.command()
def ledger(
    hub_url: HubOpt = None,
    home: HomeOpt = HOME / "demo",
    token: Annotated[str | None, typer.Option(envvar="TESSERA_TOKEN", help="API token (with --hub)")] = None,
) -> None:
    """Credited compute (PFLOP) per provider and per collective."""
    print_ledger(reader(hub_url, token, home).ledger())


def print_ledger(report: LedgerReport) -> None:
    table = Table(title="ledger: credited training compute")
    for col in ("provider", "kind", "PFLOP", "tokens", "contributions"):
        table.add_column(col, justify="left" if col in ("provider", "kind") else "right")
    for b in [*report.providers, *report.collectives]:
        table.add_row(b.name, b.kind, f"{b.pflop:.4f}", str(b.tokens), str(b.contributions))
    console.print(table)


def fmt_loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_run(info: RunStatus, rounds: list[RoundMetrics]) -> None:
    if info.modules:
        print_modules(info)
        return
    table = Table(
        title=f"run {info.run_id} ({info.name}): {info.status}, "
        f"{info.rounds_done}/{info.rounds_total} rounds, {info.workers} workers"
    )
    for col in ("round", "held-out loss", "train loss", "accepted", "rejected", "MB up", "MB down", "wall s"):
        table.add_column(col, justify="right")
    table.add_row("init", fmt_loss(info.initial_val_loss), "-", "-", "-", "-", "-", "-")
    for r in rounds:
        table.add_row(
            str(r.number),
            fmt_loss(r.val_loss),
            fmt_loss(r.train_loss),
            str(r.accepted),
            str(r.rejected),
            f"{r.bytes_in / 1e6:.2f}",
            f"{r.bytes_out / 1e6:.2f}",
            "-" if r.wall_s is None else f"{r.wall_s:.1f}",
        )
    console.print(table)


def print_modules(info: RunStatus) -> None:
    """A modular run: one row per module (`tessera status --run MODULE-RUN-ID` shows its rounds)."""
    table = Table(title=f"run {info.run_id} ({info.name}): {info.status}, {info.workers} workers")
    for col in ("module", "run id", "status", "rounds", "held-out loss (init -> latest)", "MB"):
        table.add_column(col, justify="left" if col in ("module", "run id", "status") else "right")
    for m in info.modules:
        latest = m.latest_version
        table.add_row(
            m.module or "-",
            m.run_id,
            m.status,
            f"{m.rounds_done}/{m.rounds_total}",
            f"{fmt_loss(m.initial_val_loss)} -> {fmt_loss(latest.val_loss if latest else None)}",
            f"{latest.nbytes / 1e6:.2f}" if latest else "-",
        )
    console.print(table)


# --- demo ------------------------------------------------------------------------------


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


def add_planning_commands() -> None:
    from tessera import cli_plan

    app.command("plan")(cli_plan.plan)
    app.command("simulate")(cli_plan.simulate_command)
    app.command("probe")(cli_plan.probe)


add_planning_commands()


def main() -> None:
    """Entry point: typer handles usage errors (exit 2) and Ctrl-C (exit 130)."""
    if os.getcwd() not in sys.path:  # recipe factories may live in the current folder, as with uvicorn
        sys.path.insert(0, os.getcwd())
    try:
        app()
    except TesseraError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    except SystemExit as exc:
        if exc.code == 130:
            console.print("interrupted; run the same command again to resume")
        raise
