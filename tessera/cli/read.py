"""`tessera status`, `sample`, `export` and `ledger`: read runs from a hub over HTTP, or from a
hub's folder directly (the hub need not run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Protocol

import torch
import typer

from tessera.api.messages import LedgerReport, RoundMetrics, RunStatus, VersionInfo
from tessera.cli.app import HOME, HomeOpt, HubOpt, ReadTokenOpt, RunOpt, TrustOpt, app, console
from tessera.cli.tables import fmt_loss, print_ledger, print_run
from tessera.errors import TesseraError


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


@app.command()
def status(
    hub_url: HubOpt = None,
    home: HomeOpt = HOME / "demo",
    run: RunOpt = None,
    token: ReadTokenOpt = None,
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
    token: ReadTokenOpt = None,
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
    token: ReadTokenOpt = None,
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
def ledger(
    hub_url: HubOpt = None,
    home: HomeOpt = HOME / "demo",
    token: ReadTokenOpt = None,
) -> None:
    """Credited compute (PFLOP) per provider and per collective."""
    print_ledger(reader(hub_url, token, home).ledger())
