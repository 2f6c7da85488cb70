"""Tables of runs, rounds, modules and the ledger, as the CLI prints them."""

from __future__ import annotations

from rich.table import Table

from tessera.api.messages import LedgerReport, RoundMetrics, RunStatus
from tessera.cli.app import console


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
