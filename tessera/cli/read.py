"""`tessera status` and `ledger`, and the readers of runs that `sample` and `export` use too: over
HTTP from a hub, or from a hub's folder directly (the hub need not run)."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Annotated, Protocol

import typer

from tessera.api.commons import RunLineage
from tessera.api.messages import AdapterInfo, Balance, LedgerReport, RoundMetrics, RunStatus, VersionInfo
from tessera.cli.app import HOME, HomeOpt, HubOpt, ReadTokenOpt, RunOpt, app, console, print_json
from tessera.cli.tables import print_ledger, print_run, run_view
from tessera.errors import TesseraError


class RunReader(Protocol):
    def status(self, run_id: str) -> RunStatus: ...
    def rounds(self, run_id: str) -> list[RoundMetrics]: ...
    def version(self, run_id: str, number: int | None = None) -> VersionInfo: ...
    def blob(self, run_id: str, sha: str) -> bytes: ...
    def run_ids(self) -> list[str]: ...
    def ledger(self) -> LedgerReport: ...
    def credits(self, run_id: str) -> list[Balance]: ...
    def adapter(self, run_id: str, adapter_id: str) -> AdapterInfo: ...
    def adapter_blob(self, run_id: str, adapter_id: str) -> bytes: ...
    def lineage(self, run_id: str, version: int | None = None) -> RunLineage: ...
    def close(self) -> None: ...


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

    def credits(self, run_id: str) -> list[Balance]:
        return self.service.credits(run_id, self.who)

    def adapter(self, run_id: str, adapter_id: str) -> AdapterInfo:
        return self.service.adapters.get(run_id, self.who, adapter_id)

    def adapter_blob(self, run_id: str, adapter_id: str) -> bytes:
        return self.service.adapters.blob(run_id, self.who, adapter_id)

    def lineage(self, run_id: str, version: int | None = None) -> RunLineage:
        return self.service.reads.lineage(run_id, self.who, version)

    def close(self) -> None:
        self.service.state.close()


class RemoteReader:
    def __init__(self, url: str, token: str | None) -> None:
        from tessera.api.client import HubClient

        self.client = HubClient.connect(url, token, retry_s=5.0)
        self.status, self.rounds, self.version = self.client.status, self.client.rounds, self.client.version
        self.ledger, self.credits = self.client.ledger, self.client.credits
        self.adapter, self.adapter_blob = self.client.adapter, self.client.adapter_blob
        self.lineage = self.client.lineage

    def blob(self, run_id: str, sha: str) -> bytes:
        return self.client.blob(sha, run_id)

    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.client.runs()]

    def close(self) -> None:
        self.client.close()


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
    watch: Annotated[
        bool, typer.Option("--watch", help="Show it again as it changes, until it finishes (Ctrl-C stops)")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between looks, with --watch")] = 2.0,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"status": ..., "rounds": [...]} as JSON instead')
    ] = False,
) -> None:
    """Show a running or finished run, with metrics per round."""
    with closing(reader(hub_url, token, home)) as source:
        run_id = pick_run(source, run)
        if watch:
            watch_run(source, run_id, interval, as_json)
        else:
            show_run(source.status(run_id), source.rounds(run_id), as_json)


def status_json(info: RunStatus, rounds: list[RoundMetrics]) -> dict[str, object]:
    return {"status": info.model_dump(mode="json"), "rounds": [r.model_dump(mode="json") for r in rounds]}


def show_run(info: RunStatus, rounds: list[RoundMetrics], as_json: bool) -> None:
    if as_json:
        print_json(status_json(info, rounds))
    else:
        print_run(info, rounds)


def watch_run(source: RunReader, run_id: str, interval: float, as_json: bool) -> None:
    """The run shown again every ``interval`` seconds until it has finished (or Ctrl-C): redrawn
    in place on a terminal; elsewhere, or as JSON (one object a line), again whenever it changed."""
    try:
        if console.is_terminal and not as_json:
            redraw(source, run_id, interval)
        else:
            print_changes(source, run_id, interval, as_json)
    except KeyboardInterrupt:  # how one stops watching: not an error
        return


def print_changes(source: RunReader, run_id: str, interval: float, as_json: bool) -> None:
    shown: dict[str, object] | None = None
    while True:
        info, rounds = source.status(run_id), source.rounds(run_id)
        if (now := status_json(info, rounds)) != shown:
            show_run(info, rounds, as_json)
            shown = now
        if info.status == "finished":
            return
        time.sleep(interval)  # the hub has no push channel: poll it


def redraw(source: RunReader, run_id: str, interval: float) -> None:
    """The run's table in place, with as many of its latest rounds as the terminal has room for."""
    from rich.live import Live

    info = source.status(run_id)
    with Live(console=console, auto_refresh=False) as live:
        while True:
            rounds = source.rounds(run_id)[-max(1, console.height - 12) :]
            live.update(run_view(info, rounds), refresh=True)
            if info.status == "finished":
                return
            time.sleep(interval)
            info = source.status(run_id)


@app.command()
def ledger(
    hub_url: HubOpt = None,
    home: HomeOpt = HOME / "demo",
    token: ReadTokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ledger as JSON instead")] = False,
) -> None:
    """Credited compute (PFLOP) per provider and per collective."""
    with closing(reader(hub_url, token, home)) as source:
        report = source.ledger()
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        print_ledger(report)
