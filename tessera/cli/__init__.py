"""The `tessera` command: one module per command group, all on the app of ``tessera.cli.app``.

Exit codes: 0 success; 1 a tessera error (its message, on stderr, says what to do); 2 usage error;
130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import os
import sys

# isort: off
# as `tessera --help` lists them
from tessera.cli import serve, runs, admin, worker, pool, data, read, lineage, export, finetune, demo, plan

# isort: on
from tessera.cli.app import app, console, err_console
from tessera.errors import TesseraError

__all__ = ["app", "main"]
# each adds its commands to ``app``
COMMAND_GROUPS = (serve, runs, admin, worker, pool, data, read, lineage, export, finetune, demo, plan)


def main() -> None:
    """Entry point: typer handles usage errors (exit 2) and Ctrl-C (exit 130)."""
    if os.getcwd() not in sys.path:  # recipe factories may live in the current folder, as with uvicorn
        sys.path.insert(0, os.getcwd())
    try:
        app()
    except TesseraError as exc:  # on stderr: stdout carries only results (one JSON object with --json)
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    except SystemExit as exc:
        if exc.code == 130:
            console.print("interrupted; run the same command again to resume")
        raise
