"""Providers, collectives and API tokens: who is asking, and what they may do (see auth.py)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tessera.api.messages import CreatedProvider, ProviderInfo, TokenReply
from tessera.errors import ConfigError, Conflict, Forbidden, NotFound, Unauthorized
from tessera.hub import queries
from tessera.hub.auth import Principal, require_admin
from tessera.hub.state import State
from tessera.hub.tables import ApiToken, Membership, Provider, new_id

TOKEN_PREFIX = "tsr_"
MAX_TOKEN_CHARS = 200
KINDS = ("person", "company", "collective", "sponsor")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class ProviderService:
    def __init__(self, state: State, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock

    def bootstrap_admin(self, name: str = "admin") -> str | None:
        """On a hub with no providers, create the first admin and return its token."""
        try:
            with self.state.transaction() as s:
                if s.scalar(select(func.count()).select_from(Provider)):
                    return None
                provider = self._add_provider(s, name, "person", is_admin=True)
                return self._add_token(s, provider.id, "bootstrap").token
        except IntegrityError:  # another hub process on this database bootstrapped first
            return None

    @staticmethod
    def check_format(token: str | None) -> str:
        """``token`` if it could be one of this hub's; 401 at once, without a lookup, otherwise."""
        if not token:
            raise Unauthorized(
                "this request needs `Authorization: Bearer <token>`; ask the hub's admin for one"
            )
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("token unknown or revoked; ask the hub's admin for a new one")
        return token

    def principal(self, token: str | None) -> Principal:
        """The provider behind a token; 401 for a missing, unknown or revoked token. One lookup:
        the token's row, its provider and the provider's collectives."""
        token = self.check_format(token)
        digest = hash_token(token)
        with self.state.reading() as s:
            rows = s.execute(
                select(
                    ApiToken.token_hash,
                    ApiToken.revoked_at,
                    Provider.id,
                    Provider.name,
                    Provider.is_admin,
                    Membership.collective_id,
                )
                .join(Provider, Provider.id == ApiToken.provider_id)
                .outerjoin(Membership, Membership.member_id == Provider.id)
                .where(ApiToken.token_hash == digest)
            ).all()
        if not rows or rows[0].revoked_at is not None or not hmac.compare_digest(rows[0].token_hash, digest):
            raise Unauthorized("token unknown or revoked; ask the hub's admin for a new one")
        first = rows[0]
        collectives = frozenset(r.collective_id for r in rows if r.collective_id is not None)
        return Principal(first.id, first.name, first.is_admin, collectives)

    def create_provider(self, actor: Principal, name: str, kind: str, is_admin: bool) -> CreatedProvider:
        require_admin(actor, "creating providers")
        if kind not in KINDS:
            raise ConfigError(f"provider kind {kind!r} unknown: use one of {list(KINDS)}")
        with self.state.transaction() as s:
            if s.scalar(select(Provider).where(Provider.name == name)) is not None:
                raise Conflict(f"a provider named {name!r} exists already; choose another name")
            provider = self._add_provider(s, name, kind, is_admin)
            token = self._add_token(s, provider.id, "created with the provider")
            return CreatedProvider(
                provider=self._info(s, provider), token_id=token.token_id, token=token.token
            )

    def add_member(self, actor: Principal, collective_id: str, member_id: str) -> ProviderInfo:
        require_admin(actor, "changing a collective's members")
        with self.state.transaction() as s:
            collective, member = self._provider(s, collective_id), self._provider(s, member_id)
            if collective.kind != "collective":
                raise Conflict(f"{collective.name} is a {collective.kind}, not a collective")
            if s.get(Membership, (collective.id, member.id)) is None:
                s.add(Membership(collective_id=collective.id, member_id=member.id))
                s.flush()
            return self._info(s, member)

    def create_token(self, actor: Principal, provider_id: str, label: str) -> TokenReply:
        if provider_id != actor.provider_id:
            require_admin(actor, "creating tokens for another provider")
        with self.state.transaction() as s:
            self._provider(s, provider_id)
            return self._add_token(s, provider_id, label)

    def revoke_token(self, actor: Principal, token_id: str) -> None:
        with self.state.transaction() as s:
            row = s.get(ApiToken, token_id)
            if row is None:
                raise NotFound(f"token {token_id} not found")
            if row.provider_id != actor.provider_id and not actor.is_admin:
                raise Forbidden("revoking another provider's token needs a hub admin's token")
            if row.revoked_at is None:
                row.revoked_at = self.clock()

    def describe(self, actor: Principal, provider_id: str) -> ProviderInfo:
        if provider_id != actor.provider_id:
            require_admin(actor, "reading another provider")
        with self.state.transaction() as s:
            return self._info(s, self._provider(s, provider_id))

    def find(self, name_or_id: str) -> str:
        """A provider's id from its name or id."""
        with self.state.transaction() as s:
            row = queries.provider_named(s, name_or_id)
            if row is None:
                raise NotFound(f"no provider named {name_or_id!r}")
            return row.id

    # --- helpers -----------------------------------------------------------------------

    def _add_provider(self, s: Session, name: str, kind: str, is_admin: bool) -> Provider:
        provider = Provider(id=new_id(), name=name, kind=kind, is_admin=is_admin, created_at=self.clock())
        s.add(provider)
        s.flush()
        return provider

    def _add_token(self, s: Session, provider_id: str, label: str) -> TokenReply:
        token = new_token()
        row = ApiToken(
            id=new_id(),
            provider_id=provider_id,
            token_hash=hash_token(token),
            label=label,
            created_at=self.clock(),
        )
        s.add(row)
        return TokenReply(token_id=row.id, token=token)

    @staticmethod
    def _provider(s: Session, provider_id: str) -> Provider:
        provider = s.get(Provider, provider_id)
        if provider is None:
            raise NotFound(f"provider {provider_id} not found")
        return provider

    @staticmethod
    def _info(s: Session, p: Provider) -> ProviderInfo:
        return ProviderInfo(
            provider_id=p.id,
            name=p.name,
            kind=p.kind,
            is_admin=p.is_admin,
            collectives=queries.collectives_of(s, p.id),
        )


def own_collective(s: Session, who: Principal, name_or_id: str, hint: str = "") -> Provider:
    """The collective named (by name or id) that ``who`` belongs to, is, or (a hub admin) may act
    for: NotFound if there is no such collective, Forbidden (with ``hint``) if ``who`` is not in it."""
    found = queries.provider_named(s, name_or_id)
    if found is None or found.kind != "collective":
        raise NotFound(f"no collective {name_or_id!r} on this hub")
    if not (who.is_admin or found.id == who.provider_id or found.id in who.collectives):
        raise Forbidden(f"{who.name} is not a member of collective {found.name}{hint}")
    return found
