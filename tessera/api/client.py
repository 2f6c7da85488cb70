"""Typed client of the hub's HTTP API.

The ``httpx.Client`` is injectable: tests pass the hub's in-process ASGI app (a Starlette
``TestClient``), production uses a real connection. Transport errors and 5xx answers are
retried with backoff, 429 answers after their ``Retry-After``; other 4xx answers raise the
matching ``TesseraError``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import BaseModel

from tessera.api.commons import (
    AccessChange,
    AccessExplanation,
    DatasetFile,
    DatasetInfo,
    DatasetRequest,
    RunEventInfo,
    RunLineage,
    WithdrawReply,
    WithdrawRequest,
)
from tessera.api.messages import (
    AdapterInfo,
    AdapterMeta,
    Assignment,
    Balance,
    ContributionInfo,
    ContributionMeta,
    ContributionReply,
    CreatedProvider,
    CreateRunReply,
    LeaseReply,
    LedgerReport,
    MergeReply,
    MergeRequest,
    PledgeInfo,
    PledgeRequest,
    PoolJoinRequest,
    PoolMemberInfo,
    ProbeReply,
    ProviderInfo,
    QueueReport,
    RegisterReply,
    RoundMetrics,
    RunStatus,
    TokenReply,
    VersionInfo,
)
from tessera.api.protocol import ADAPTER_HEADER, META_HEADER, error_for
from tessera.errors import HubFailed, HubUnavailable, NotFound

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class HubAPI(Protocol):
    """What the work loop needs of a hub: ``HubClient`` over HTTP, ``InProcessClient`` in process."""

    bytes_up: int
    bytes_down: int

    @property
    def run_id(self) -> str: ...
    def select_run(self, run_id: str) -> None: ...
    def register(
        self,
        name: str,
        module: str | None = None,
        ranks: int = 1,
        member_id: str | None = None,
        held_datasets: list[str] | None = None,
    ) -> RegisterReply: ...
    def status(self, run_id: str) -> RunStatus: ...
    def lease(self, worker_id: str, wait_s: float = 0.0) -> LeaseReply: ...
    def blob(self, sha: str, run_id: str | None = None) -> bytes: ...
    def version(self, run_id: str, number: int | None = None) -> VersionInfo: ...
    def submit(self, meta: ContributionMeta, body: bytes) -> ContributionReply: ...
    def dataset_files(self, dataset_id: str) -> list[DatasetFile]: ...
    def dataset_file(self, dataset_id: str, sha: str) -> bytes: ...


class HubClient:
    def __init__(
        self, http: httpx.Client, token: str | None = None, retry_s: float = 60.0, run_id: str | None = None
    ) -> None:
        self.http = http
        self.token = token
        self._run_id = run_id
        self.retry_s = retry_s
        self.bytes_up = 0
        self.bytes_down = 0

    @classmethod
    def connect(
        cls, url: str, token: str | None = None, retry_s: float = 60.0, run_id: str | None = None
    ) -> HubClient:
        # an idle connection expires before the hub's keep-alive timeout (uvicorn's 5 s) closes it
        limits = httpx.Limits(keepalive_expiry=2.0)
        http = httpx.Client(base_url=url, timeout=httpx.Timeout(120.0, connect=10.0), limits=limits)
        return cls(http, token, retry_s, run_id)

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            raise NotFound("this command needs a run id (--run)")
        return self._run_id

    def select_run(self, run_id: str) -> None:
        """Work on ``run_id`` from now on (a module's run, after registering on a modular run)."""
        self._run_id = run_id

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        give_up = time.monotonic() + self.retry_s
        delay = 0.2
        while True:
            try:
                response = self.http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 429:
                    wait = retry_after(response, delay)
                    if time.monotonic() + wait <= give_up:
                        log.info("hub busy (%s); retrying in %.1fs", response.text[:200], wait)
                        time.sleep(wait)
                        continue
                if response.status_code < 500:
                    return raise_for_error(response)
                if response.status_code == 500:  # the hub's own failure: the same request fails again
                    raise HubFailed(
                        f"the hub at {self.http.base_url} failed on {method} {path} (HTTP 500: "
                        f"{response.text[:200]}); the request is not at fault: the hub's log says why"
                    )
                problem = f"HTTP {response.status_code}: {response.text[:200]}"  # 502-504: retried
            if time.monotonic() + delay > give_up:
                raise HubUnavailable(
                    f"hub at {self.http.base_url} unreachable ({problem}); "
                    "check that it runs and the URL is right"
                )
            log.warning("hub request %s %s failed (%s); retrying in %.1fs", method, path, problem, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _json(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._request(method, path, **kwargs).json())

    def _json_list(self, model: type[M], path: str, **kwargs: Any) -> list[M]:
        return [model.model_validate(item) for item in self._request("GET", path, **kwargs).json()]

    # --- API ---------------------------------------------------------------------------

    def create_run(self, recipe_text: str) -> CreateRunReply:
        return self._json(
            CreateRunReply,
            "POST",
            "/v1/runs",
            content=recipe_text.encode(),
            headers={"Content-Type": "application/toml"},
        )

    def register(
        self,
        name: str,
        module: str | None = None,
        ranks: int = 1,
        member_id: str | None = None,
        held_datasets: list[str] | None = None,
    ) -> RegisterReply:
        body = {
            "name": name,
            "module": module,
            "ranks": ranks,
            "member_id": member_id,
            "held_datasets": list(held_datasets or []),
        }
        return self._json(RegisterReply, "POST", f"/v1/runs/{self.run_id}/workers", json=body)

    def lease(self, worker_id: str, wait_s: float = 0.0) -> LeaseReply:
        return self._json(
            LeaseReply,
            "POST",
            f"/v1/runs/{self.run_id}/leases",
            json={"worker_id": worker_id, "wait_s": wait_s},
        )

    def blob(self, sha: str, run_id: str | None = None) -> bytes:
        """Download a version blob and check that its bytes match its sha256."""
        data = self._request("GET", f"/v1/runs/{run_id or self.run_id}/blobs/{sha}").content
        if hashlib.sha256(data).hexdigest() != sha:
            raise HubUnavailable(f"blob {sha} arrived corrupted (sha256 mismatch); retry")
        self.bytes_down += len(data)
        return data

    def submit(self, meta: ContributionMeta, body: bytes) -> ContributionReply:
        reply = self._json(
            ContributionReply,
            "POST",
            f"/v1/runs/{self.run_id}/contributions",
            content=body,
            headers={META_HEADER: meta.model_dump_json(), "Content-Type": "application/octet-stream"},
        )
        self.bytes_up += len(body)
        return reply

    def probe_download(self, nbytes: int) -> int:
        return len(self._request("GET", "/v1/probe", params={"nbytes": nbytes}).content)

    def probe_upload(self, nbytes: int) -> int:
        return self._json(ProbeReply, "POST", "/v1/probe", content=bytes(nbytes)).nbytes

    def ledger(self) -> LedgerReport:
        return self._json(LedgerReport, "GET", "/v1/ledger")

    def whoami(self) -> ProviderInfo:
        return self._json(ProviderInfo, "GET", "/v1/whoami")

    def create_provider(self, name: str, kind: str = "person", is_admin: bool = False) -> CreatedProvider:
        body = {"name": name, "kind": kind, "is_admin": is_admin}
        return self._json(CreatedProvider, "POST", "/v1/providers", json=body)

    def add_member(self, collective: str, member: str) -> ProviderInfo:
        return self._json(
            ProviderInfo, "POST", f"/v1/providers/{collective}/members", json={"member": member}
        )

    def create_token(self, provider: str, label: str = "") -> TokenReply:
        return self._json(TokenReply, "POST", f"/v1/providers/{provider}/tokens", json={"label": label})

    def revoke_token(self, token_id: str) -> None:
        self._request("DELETE", f"/v1/tokens/{token_id}")

    def runs(self) -> list[RunStatus]:
        return self._json_list(RunStatus, "/v1/runs")

    def status(self, run_id: str) -> RunStatus:
        return self._json(RunStatus, "GET", f"/v1/runs/{run_id}")

    def rounds(self, run_id: str) -> list[RoundMetrics]:
        return self._json_list(RoundMetrics, f"/v1/runs/{run_id}/rounds")

    def contributions(self, run_id: str, round_number: int | None = None) -> list[ContributionInfo]:
        params = {} if round_number is None else {"round": round_number}
        return self._json_list(ContributionInfo, f"/v1/runs/{run_id}/contributions", params=params)

    def upload_adapter(self, run_id: str, meta: AdapterMeta, body: bytes) -> AdapterInfo:
        headers = {ADAPTER_HEADER: meta.model_dump_json(), "Content-Type": "application/octet-stream"}
        reply = self._json(AdapterInfo, "POST", f"/v1/runs/{run_id}/adapters", content=body, headers=headers)
        self.bytes_up += len(body)
        return reply

    def adapters(self, run_id: str) -> list[AdapterInfo]:
        return self._json_list(AdapterInfo, f"/v1/runs/{run_id}/adapters")

    def adapter(self, run_id: str, adapter_id: str) -> AdapterInfo:
        return self._json(AdapterInfo, "GET", f"/v1/runs/{run_id}/adapters/{adapter_id}")

    def adapter_blob(self, run_id: str, adapter_id: str) -> bytes:
        data = self._request("GET", f"/v1/runs/{run_id}/adapters/{adapter_id}/blob").content
        self.bytes_down += len(data)
        return data

    def credits(self, run_id: str) -> list[Balance]:
        return self._json_list(Balance, f"/v1/runs/{run_id}/credits")

    def merge(self, run_id: str, request: MergeRequest) -> MergeReply:
        return self._json(MergeReply, "POST", f"/v1/runs/{run_id}/merges", json=request.model_dump())

    def merges(self, run_id: str) -> list[MergeReply]:
        return self._json_list(MergeReply, f"/v1/runs/{run_id}/merges")

    def version(self, run_id: str, number: int | None = None) -> VersionInfo:
        which = "latest" if number is None else str(number)
        return self._json(VersionInfo, "GET", f"/v1/runs/{run_id}/versions/{which}")

    def pause(self, run_id: str, paused: bool = True) -> RunStatus:
        return self._json(RunStatus, "POST", f"/v1/runs/{run_id}/{'pause' if paused else 'resume'}")

    # --- the pool and pledges --------------------------------------------------------------

    def join_pool(self, request: PoolJoinRequest) -> PoolMemberInfo:
        return self._json(PoolMemberInfo, "POST", "/v1/pool/members", json=request.model_dump())

    def pool_members(self) -> list[PoolMemberInfo]:
        return self._json_list(PoolMemberInfo, "/v1/pool/members")

    def assign(self, member_id: str, exclude: list[str] | None = None) -> Assignment:
        body = {"exclude": list(exclude or [])}
        return self._json(Assignment, "POST", f"/v1/pool/members/{member_id}/assign", json=body)

    def queue(self) -> QueueReport:
        return self._json(QueueReport, "GET", "/v1/pool/queue")

    def pledge(self, request: PledgeRequest) -> PledgeInfo:
        return self._json(PledgeInfo, "POST", "/v1/pledges", json=request.model_dump())

    def pledges(self) -> list[PledgeInfo]:
        return self._json_list(PledgeInfo, "/v1/pledges")

    def cancel_pledge(self, pledge_id: str) -> PledgeInfo:
        return self._json(PledgeInfo, "POST", f"/v1/pledges/{pledge_id}/cancel")

    # --- the commons: datasets and lineage --------------------------------------------

    def lineage(self, run_id: str, version: int | None = None) -> RunLineage:
        params = {} if version is None else {"version": version}
        return self._json(RunLineage, "GET", f"/v1/runs/{run_id}/lineage", params=params)

    def events(self, run_id: str) -> list[RunEventInfo]:
        return self._json_list(RunEventInfo, f"/v1/runs/{run_id}/events")

    def add_dataset(self, request: DatasetRequest) -> DatasetInfo:
        return self._json(DatasetInfo, "POST", "/v1/datasets", json=request.model_dump())

    def upload_dataset_file(self, dataset_id: str, sha: str, body: bytes) -> DatasetInfo:
        headers = {"Content-Type": "application/octet-stream"}
        reply = self._json(
            DatasetInfo, "PUT", f"/v1/datasets/{dataset_id}/files/{sha}", content=body, headers=headers
        )
        self.bytes_up += len(body)
        return reply

    def datasets(self, owner: str | None = None, name: str | None = None) -> list[DatasetInfo]:
        params = {k: v for k, v in (("owner", owner), ("name", name)) if v is not None}
        return self._json_list(DatasetInfo, "/v1/datasets", params=params)

    def dataset(self, dataset_id: str) -> DatasetInfo:
        return self._json(DatasetInfo, "GET", f"/v1/datasets/{dataset_id}")

    def dataset_versions(self, dataset_id: str) -> list[DatasetInfo]:
        return self._json_list(DatasetInfo, f"/v1/datasets/{dataset_id}/versions")

    def dataset_descendants(self, dataset_id: str) -> list[DatasetInfo]:
        return self._json_list(DatasetInfo, f"/v1/datasets/{dataset_id}/descendants")

    def dataset_files(self, dataset_id: str) -> list[DatasetFile]:
        return self._json_list(DatasetFile, f"/v1/datasets/{dataset_id}/files")

    def dataset_file(self, dataset_id: str, sha: str) -> bytes:
        data = self._request("GET", f"/v1/datasets/{dataset_id}/files/{sha}").content
        self.bytes_down += len(data)
        return data

    def withdraw_dataset(self, dataset_id: str, reason: str) -> WithdrawReply:
        body = WithdrawRequest(reason=reason).model_dump()
        return self._json(WithdrawReply, "POST", f"/v1/datasets/{dataset_id}/withdraw", json=body)

    def explain_access(self, dataset_id: str, provider: str) -> AccessExplanation:
        return self._json(AccessExplanation, "GET", f"/v1/datasets/{dataset_id}/access/{provider}")

    def change_access(
        self, dataset_id: str, provider: str, revoke: bool, reason: str = ""
    ) -> AccessExplanation:
        action = "revoke" if revoke else "restore"
        body = AccessChange(reason=reason).model_dump()
        return self._json(
            AccessExplanation, "POST", f"/v1/datasets/{dataset_id}/access/{provider}/{action}", json=body
        )


def retry_after(response: httpx.Response, default: float) -> float:
    """Seconds a 429 answer asks to wait (its ``Retry-After``), at most a minute."""
    try:
        return min(60.0, max(0.0, float(response.headers.get("retry-after", default))))
    except ValueError:
        return default


def raise_for_error(response: httpx.Response) -> httpx.Response:
    if response.status_code < 400:
        return response
    try:
        body = response.json()
        code, detail = body.get("error", "error"), body.get("detail", response.text)
    except ValueError:
        code, detail = "error", response.text
    raise error_for(code)(f"hub refused the request (HTTP {response.status_code}): {detail}")
