"""Tables of runs, rounds, modules and the ledger, as the CLI prints them: each fits 80 columns
(short column titles; a run's title on two lines)."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tessera.api.messages import LedgerReport, RoundMetrics, RunStatus
from tessera.cli.app import console


def ledger_table(report: LedgerReport) -> Table:
    """Per provider: the compute it gave (PFLOP credited), what its runs used, the balance of the
    two (which buys its runs their share of the pool) and its contributions (``--json`` has the
    tokens too)."""
    table = Table(title="ledger: training compute in PFLOP")
    for col in ("provider", "gave", "used", "balance", "contribs"):
        table.add_column(col, justify="left" if col == "provider" else "right")
    for b in [*report.providers, *report.collectives]:
        name = f"{b.name} ({b.kind})" if b.kind == "collective" else b.name
        row = (f"{b.pflop:.3f}", f"{b.used_pflop:.3f}", f"{b.balance_pflop:+.3f}", str(b.contributions))
        table.add_row(name, *row)
    return table


def print_ledger(report: LedgerReport) -> None:
    console.print(ledger_table(report))


def fmt_loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_title(info: RunStatus, rounds: bool = True) -> str:
    done = f"{info.rounds_done}/{info.rounds_total} rounds, " if rounds else ""
    status = f"{info.status} (paused)" if info.paused else info.status
    return f"run {info.run_id} ({info.name})\n{status}, {done}{info.workers} workers"


ROUND_COLUMNS = ("round", "held-out", "train", "acc", "rej", "MB up", "MB down", "wall s")


def rounds_table(info: RunStatus, rounds: list[RoundMetrics]) -> Table:
    """One row per round: held-out and train loss, contributions accepted and rejected, traffic."""
    table = Table(title=run_title(info), caption="acc, rej: contributions accepted, rejected")
    for col in ROUND_COLUMNS:
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
    return table


def modules_table(info: RunStatus) -> Group:
    """A modular run: one row per module, then each module's run id (`tessera status --run ID`
    shows its rounds)."""
    table = Table(title=run_title(info, rounds=False))
    for col in ("module", "status", "rounds", "held-out (init -> now)", "MB"):
        table.add_column(col, justify="left" if col in ("module", "status") else "right")
    for m in info.modules:
        latest = m.latest_version
        table.add_row(
            m.module or "-",
            m.status,
            f"{m.rounds_done}/{m.rounds_total}",
            f"{fmt_loss(m.initial_val_loss)} -> {fmt_loss(latest.val_loss if latest else None)}",
            f"{latest.nbytes / 1e6:.2f}" if latest else "-",
        )
    ids = [f"  {m.module or '-'}: {m.run_id}" for m in info.modules]
    return Group(table, "run ids of the modules (`tessera status --run ID` shows its rounds):", *ids)


def run_view(info: RunStatus, rounds: list[RoundMetrics]) -> RenderableType:
    """What `tessera status` shows of a run: its rounds, or its modules; and withdrawn data it
    trains on, in red below."""
    table = modules_table(info) if info.modules else rounds_table(info, rounds)
    if not info.marks:
        return table
    return Group(table, *(Text(f"marked: {m}", style="red") for m in info.marks))


def print_run(info: RunStatus, rounds: list[RoundMetrics]) -> None:
    console.print(run_view(info, rounds))
