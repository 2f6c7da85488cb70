"""The typer app every command group adds its commands to, the console they print on, and the
options and defaults several groups share (the default hub URL is set here, once). Only the
CLI configures logging (``setup_logging``) and draws progress bars and tables."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="tessera: train shared models together on pooled, loosely connected compute.",
)
console = Console()
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


def setup_logging(verbose: bool) -> None:
    """Log lines on stderr: drawn by rich on a terminal; plain, timestamped and one line each
    otherwise (a service's log file or journal, which rich would wrap at 80 columns, and slowly)."""
    err = Console(stderr=True)
    handler: logging.Handler
    if err.is_terminal:
        handler = RichHandler(console=err, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)
