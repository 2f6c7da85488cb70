"""A hub client that calls a ``HubService`` in the same process, without HTTP.

Same methods and errors as ``HubClient`` for what the work loop uses, so simulations and
benchmarks run the hub's real validation and aggregation code at full speed.
"""

from __future__ import annotations

from tessera.api.commons import DatasetFile
from tessera.api.messages import (
    ContributionMeta,
    ContributionReply,
    LeaseReply,
    RegisterReply,
    RunStatus,
    VersionInfo,
)
from tessera.hub.auth import Principal
from tessera.hub.service import HubService


class InProcessClient:
    def __init__(self, service: HubService, token: str, run_id: str) -> None:
        self.service = service
        self.token = token
        self.run_id = run_id
        self.bytes_up = 0
        self.bytes_down = 0

    def who(self) -> Principal:
        """Resolved on every call, as over HTTP, so a revoked token stops working at once."""
        return self.service.providers.principal(self.token)

    def select_run(self, run_id: str) -> None:
        self.run_id = run_id

    def register(
        self,
        name: str,
        module: str | None = None,
        ranks: int = 1,
        member_id: str | None = None,
        held_datasets: list[str] | None = None,
    ) -> RegisterReply:
        return self.service.register(self.run_id, self.who(), name, module, ranks, member_id, held_datasets)

    def status(self, run_id: str) -> RunStatus:
        return self.service.status(run_id, self.who())

    def lease(self, worker_id: str, wait_s: float = 0.0) -> LeaseReply:
        return self.service.lease(self.run_id, self.who(), worker_id, wait_s)

    def blob(self, sha: str, run_id: str | None = None) -> bytes:
        data = self.service.download(run_id or self.run_id, self.who(), sha)
        self.bytes_down += len(data)
        return data

    def version(self, run_id: str, number: int | None = None) -> VersionInfo:
        return self.service.version(run_id, self.who(), number)

    def dataset_files(self, dataset_id: str) -> list[DatasetFile]:
        return self.service.datasets.files(self.who(), dataset_id)

    def dataset_file(self, dataset_id: str, sha: str) -> bytes:
        data = self.service.datasets.file(self.who(), dataset_id, sha)
        self.bytes_down += len(data)
        return data

    def submit(self, meta: ContributionMeta, body: bytes) -> ContributionReply:
        reply = self.service.submit(self.run_id, self.who(), meta, body)
        self.bytes_up += len(body)
        if reply.status != "rejected" and not reply.duplicate:  # as the hub's route does, after replying
            self.service.close_if_due(self.run_id)
        return reply
