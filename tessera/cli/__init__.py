"""The `tessera` command: one module per command group, all on the app of ``tessera.cli.app``.

Exit codes: 0 success; 1 a tessera error (the message says what to do); 2 usage error;
130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import os
import sys

# isort: off
from tessera.cli import serve, runs, admin, worker, read, demo, plan  # as `tessera --help` lists them

# isort: on
from tessera.cli.app import app, console
from tessera.errors import TesseraError

__all__ = ["app", "main"]
COMMAND_GROUPS = (serve, runs, admin, worker, read, demo, plan)  # each adds its commands to ``app``


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
