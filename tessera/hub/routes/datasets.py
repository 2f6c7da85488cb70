"""/v1/datasets: dataset versions (registered, their files uploaded one by one and read back),
their versions and descendants, withdrawal, and access (explained, revoked, restored), all
decided by tessera.hub.datasets and tessera.hub.access."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from tessera.api.commons import (
    AccessChange,
    AccessExplanation,
    DatasetFile,
    DatasetInfo,
    DatasetRequest,
    WithdrawReply,
    WithdrawRequest,
)
from tessera.api.messages import NAME_PATTERN
from tessera.hub.routes.common import BINARY, BINARY_REPLY, Name, Service, Sha, Who, error_docs, read_limited

router = APIRouter()
DatasetId = Sha
BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": BINARY}}}
Filter = Annotated[str | None, Query(max_length=200, pattern=NAME_PATTERN)]


@router.post("/v1/datasets", status_code=201, response_model=DatasetInfo, responses=error_docs(409))
def add_dataset(req: DatasetRequest, who: Who, service: Service) -> DatasetInfo:
    """Register a dataset version (the same files again: the same version, and what is missing)."""
    return service.datasets.add(who, req)


@router.get("/v1/datasets", response_model=list[DatasetInfo])
def list_datasets(who: Who, service: Service, owner: Filter = None, name: Filter = None) -> list[DatasetInfo]:
    """The dataset versions you may read, newest first."""
    return service.datasets.visible(who, owner, name)


@router.get("/v1/datasets/{dataset_id}", response_model=DatasetInfo)
def get_dataset(dataset_id: DatasetId, who: Who, service: Service) -> DatasetInfo:
    return service.datasets.get(who, dataset_id)


@router.get("/v1/datasets/{dataset_id}/versions", response_model=list[DatasetInfo])
def dataset_versions(dataset_id: DatasetId, who: Who, service: Service) -> list[DatasetInfo]:
    """The versions of the same owner and name, oldest first."""
    return service.datasets.versions(who, dataset_id)


@router.get("/v1/datasets/{dataset_id}/descendants", response_model=list[DatasetInfo])
def dataset_descendants(dataset_id: DatasetId, who: Who, service: Service) -> list[DatasetInfo]:
    """The versions derived from this one, directly or through others."""
    return service.datasets.descendants(who, dataset_id)


@router.get("/v1/datasets/{dataset_id}/files", response_model=list[DatasetFile])
def dataset_files(dataset_id: DatasetId, who: Who, service: Service) -> list[DatasetFile]:
    return service.datasets.files(who, dataset_id)


@router.put(
    "/v1/datasets/{dataset_id}/files/{sha}",
    response_model=DatasetInfo,
    openapi_extra=BINARY_BODY,
    responses=error_docs(413),
)
async def upload_file(
    dataset_id: DatasetId, sha: Sha, request: Request, who: Who, service: Service
) -> DatasetInfo:
    """One file of the version, its exact bytes (checked against its sha256 and size)."""
    size = await run_in_threadpool(service.datasets.file_size, who, dataset_id, sha)  # 403 before any read
    body = await read_limited(request, size)
    return await run_in_threadpool(service.datasets.put_file, who, dataset_id, sha, body)


@router.get("/v1/datasets/{dataset_id}/files/{sha}", response_class=Response, responses=BINARY_REPLY)
def download_file(dataset_id: DatasetId, sha: Sha, who: Who, service: Service) -> Response:
    return Response(service.datasets.file(who, dataset_id, sha), media_type="application/octet-stream")


@router.post("/v1/datasets/{dataset_id}/withdraw", response_model=WithdrawReply)
def withdraw(dataset_id: DatasetId, req: WithdrawRequest, who: Who, service: Service) -> WithdrawReply:
    """Withdraw the version: no new lease trains on it; what derives from it is marked."""
    return service.datasets.withdraw(who, dataset_id, req.reason)


@router.get("/v1/datasets/{dataset_id}/access/{provider}", response_model=AccessExplanation)
def explain_access(dataset_id: DatasetId, provider: Name, who: Who, service: Service) -> AccessExplanation:
    """Whether a provider may read the version, and the rule that decides it."""
    return service.datasets.explain(who, dataset_id, provider)


@router.post("/v1/datasets/{dataset_id}/access/{provider}/revoke", response_model=AccessExplanation)
def revoke_access(
    dataset_id: DatasetId, provider: Name, req: AccessChange, who: Who, service: Service
) -> AccessExplanation:
    service.datasets.revoke(who, dataset_id, provider, req.reason)
    return service.datasets.explain(who, dataset_id, provider)


@router.post("/v1/datasets/{dataset_id}/access/{provider}/restore", response_model=AccessExplanation)
def restore_access(
    dataset_id: DatasetId, provider: Name, req: AccessChange, who: Who, service: Service
) -> AccessExplanation:
    service.datasets.restore(who, dataset_id, provider)
    return service.datasets.explain(who, dataset_id, provider)
