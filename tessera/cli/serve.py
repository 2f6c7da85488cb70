"""`tessera hub`: serve a hub over HTTP on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tessera.cli.app import DEFAULT_PORT, HOME, DataRootOpt, TrustOpt, app, console, setup_logging
from tessera.task import configure_torch


@app.command()
def hub(
    home: Annotated[Path, typer.Option(help="Folder for the SQLite database and blobs")] = HOME / "hub",
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
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
