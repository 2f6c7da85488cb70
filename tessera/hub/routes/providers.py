"""Providers, collectives and tokens (/v1/whoami, /v1/providers, /v1/tokens), and the ledger of
credited compute (/v1/ledger)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from tessera.api.messages import (
    CreatedProvider,
    CreateProviderRequest,
    LedgerReport,
    MemberRequest,
    ProviderInfo,
    TokenReply,
    TokenRequest,
)
from tessera.hub.routes.common import HexId, Name, Service, Who, error_docs

router = APIRouter()


@router.get("/v1/ledger", response_model=LedgerReport)
def ledger(who: Who, service: Service) -> LedgerReport:
    """Credited compute per provider and per collective that the caller may read."""
    return service.ledger.report(who)


@router.get("/v1/whoami", response_model=ProviderInfo)
def whoami(who: Who, service: Service) -> ProviderInfo:
    return service.providers.describe(who, who.provider_id)


@router.post("/v1/providers", status_code=201, response_model=CreatedProvider, responses=error_docs(409))
def create_provider(req: CreateProviderRequest, who: Who, service: Service) -> CreatedProvider:
    """Create a provider (a collective too) and its first token (hub admins only)."""
    return service.providers.create_provider(who, req.name, req.kind, req.is_admin)


@router.post("/v1/providers/{collective}/members", response_model=ProviderInfo, responses=error_docs(409))
def add_member(collective: Name, req: MemberRequest, who: Who, service: Service) -> ProviderInfo:
    providers = service.providers
    return providers.add_member(who, providers.find(collective), providers.find(req.member))


@router.post("/v1/providers/{provider}/tokens", status_code=201, response_model=TokenReply)
def create_token(provider: Name, req: TokenRequest, who: Who, service: Service) -> TokenReply:
    return service.providers.create_token(who, service.providers.find(provider), req.label)


@router.delete("/v1/tokens/{token_id}", status_code=204, response_class=Response)
def revoke_token(token_id: HexId, who: Who, service: Service) -> Response:
    service.providers.revoke_token(who, token_id)
    return Response(status_code=204)
