"""`tessera provider`, `tessera token` and `tessera whoami`: providers, collectives and API tokens
(``--json``: the ids and tokens as one JSON object, for scripts)."""

from __future__ import annotations

from typing import Annotated

import typer

from tessera.cli.app import DEFAULT_HUB_URL, HubUrl, JsonFlag, TokenOpt, app, console, print_json

providers_app = typer.Typer(help="Providers and collectives (hub admins).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(providers_app, name="provider")
app.add_typer(tokens_app, name="token")


@providers_app.command("create")
def provider_create(
    name: str,
    token: TokenOpt,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    kind: Annotated[str, typer.Option(help="person, company, collective or sponsor")] = "person",
    admin: Annotated[bool, typer.Option("--admin", help="Make a hub admin")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a provider (or a collective) and print its first token."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        created = client.create_provider(name, kind, admin)
    if as_json:  # the provider's fields, then its first token's
        print_json(
            {**created.provider.model_dump(mode="json"), "token_id": created.token_id, "token": created.token}
        )
        return
    console.print(f"{created.provider.kind} {name}: {created.provider.provider_id}", soft_wrap=True)
    console.print(f"token: {created.token}", soft_wrap=True)


@providers_app.command("add-member")
def provider_add_member(
    collective: str, member: str, token: TokenOpt, hub_url: HubUrl = DEFAULT_HUB_URL
) -> None:
    """Add a provider to a collective (names or ids)."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        info = client.add_member(collective, member)
    console.print(f"{info.name} is in {len(info.collectives)} collective(s)")


@app.command()
def whoami(token: TokenOpt, hub_url: HubUrl = DEFAULT_HUB_URL, as_json: JsonFlag = False) -> None:
    """Show the provider behind a token."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        info = client.whoami()
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    console.print(f"{info.name} ({info.kind}{', hub admin' if info.is_admin else ''}), id {info.provider_id}")


@tokens_app.command("create")
def token_create(
    token: TokenOpt,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    provider: Annotated[str | None, typer.Option(help="For another provider (hub admins)")] = None,
    label: str = "",
    as_json: JsonFlag = False,
) -> None:
    """Create a new API token (for yourself, or as admin for another provider)."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        reply = client.create_token(provider or client.whoami().provider_id, label)
    if as_json:
        print_json(reply.model_dump(mode="json"))
        return
    console.print(f"token id: {reply.token_id}\ntoken: {reply.token}", soft_wrap=True)


@tokens_app.command("revoke")
def token_revoke(token_id: str, token: TokenOpt, hub_url: HubUrl = DEFAULT_HUB_URL) -> None:
    """Revoke a token by its id; requests with it are refused from then on."""
    from tessera.api.client import HubClient

    with HubClient.connect(hub_url, token) as client:
        client.revoke_token(token_id)
    console.print(f"token {token_id} revoked")
