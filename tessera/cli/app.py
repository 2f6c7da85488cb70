"""The typer app every command group adds its commands to, the consoles they print on (``console``
on stdout; ``err_console`` on stderr, for log lines and progress bars), the options and defaults
several groups share (the default hub URL is set here, once), and ``print_json`` for commands'
``--json`` output. Only the CLI configures logging (``setup_logging``) and draws progress bars
and tables."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="tessera: train shared models together on pooled, loosely connected compute.",
)
console = Console()
err_console = Console(stderr=True)  # log lines and progress bars share it: a bar stays below the lines
HOME = Path(".tessera")
DEFAULT_PORT = 8700
DEFAULT_HUB_URL = f"http://127.0.0.1:{DEFAULT_PORT}"

TrustOpt = Annotated[
    list[str] | None,
    typer.Option("--trust", help="Also trust this factory, package.module:function (repeat)"),
]
DataRootOpt = Annotated[
    list[Path] | None,
    typer.Option("--data-root", help="A folder recipes may read their [data] path from (repeat)"),
]
HubUrl = Annotated[str, typer.Option("--hub", help="Hub URL")]
TokenOpt = Annotated[str, typer.Option("--token", envvar="TESSERA_TOKEN", help="Your API token")]
# Commands that read runs: from a hub over HTTP (--hub, --token), or from a hub's folder.
HubOpt = Annotated[str | None, typer.Option("--hub", help="Hub URL (default: read --home directly)")]
HomeOpt = Annotated[Path, typer.Option(help="Hub folder to read when no --hub is given")]
RunOpt = Annotated[str | None, typer.Option("--run", help="Run id (default: the newest run)")]
ReadTokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="TESSERA_TOKEN", help="API token (with --hub)")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else")]
WindowOpt = Annotated[
    list[str] | None,
    typer.Option("--window", help='When it may work, e.g. "22:00-07:00 Europe/Vienna mon-fri" (repeat)'),
]
HolidayOpt = Annotated[
    list[str] | None, typer.Option("--holiday", help="A date it does not work, YYYY-MM-DD (repeat)")
]


def print_json(value: Any) -> None:
    """``value`` as one line of JSON on stdout (not through rich: no wrapping, no colours)."""
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def setup_logging(verbose: bool) -> None:
    """Log lines on stderr: drawn by rich on a terminal; plain, timestamped and one line each
    otherwise (a service's log file or journal, which rich would wrap at 80 columns, and slowly)."""
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("tessera.data").setLevel(logging.INFO)  # what a data source read and skipped
