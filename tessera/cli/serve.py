"""`tessera hub`: serve a hub over HTTP on this machine."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from tessera.cli.app import DEFAULT_PORT, HOME, DataRootOpt, TrustOpt, app, console, setup_logging
from tessera.errors import ConfigError
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
    sock = listening_socket(host, port)  # before anything is printed: a taken port is told at once
    token_file = (home / "admin.token").resolve()
    if admin_token(service, home) is not None:
        console.print(f"admin token in {token_file} (create providers and tokens with it)", soft_wrap=True)
    else:
        console.print(
            f"no admin token in {token_file}: this hub's database was made elsewhere; use the admin "
            "token written where the hub first ran",
            soft_wrap=True,
        )
    url = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    console.print(f"hub serving at {url} (Ctrl-C stops it)", soft_wrap=True)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    server.run(sockets=[sock])


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (ConfigError saying what to do if it cannot be)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}: {exc}; give --host an address of this machine") from exc
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or stop what uses it"
        ) from exc
    return sock
