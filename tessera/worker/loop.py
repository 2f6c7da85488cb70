"""The worker's loop: lease, download the blobs it lacks, train H inner steps, upload.

Only outbound HTTP. The worker remembers its identity and blobs in ``state_dir``, so a
restarted worker picks up the run where it left: it gets its open lease back, or a new one.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from tessera.core.inner import InnerResult, InnerTrainer
from tessera.core.pseudo_gradient import pseudo_gradient
from tessera.core.tensors import TensorDict, from_bytes, model_float_tensors, to_bytes
from tessera.data.source import DataSource
from tessera.hub.schemas import ContributionMeta, ContributionReply, LeaseGrant
from tessera.hub.store import FileBlobStore
from tessera.recipe import Recipe, parse_recipe
from tessera.task import build_model, load_data
from tessera.worker.client import HubAPI

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    state_dir: Path
    name: str = "worker"
    data_path: str | None = None  # the worker's own data; None: the recipe's data source
    wait_s: float = 10.0


@dataclass
class WorkerSummary:
    contributions: list[ContributionReply] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(frozen=True)
class Identity:
    run_id: str
    worker_id: str
    shard: str | None


class BlobCache:
    """The version blobs a worker holds; only missing ones are downloaded."""

    def __init__(self, root: Path, client: HubAPI) -> None:
        self.store = FileBlobStore(root)
        self.client = client

    def get(self, sha: str) -> bytes:
        if self.store.has(sha):
            return self.store.get(sha)
        data = self.client.blob(sha)
        self.store.put(data)
        self.prune(keep=sha)
        return data

    def prune(self, keep: str) -> None:
        for path in self.store.root.glob("*/*"):
            if path.name != keep:
                path.unlink(missing_ok=True)


class WorkLoop:
    def __init__(self, client: HubAPI, settings: WorkerSettings) -> None:
        self.client = client
        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.identity = self._identity()
        self.recipe: Recipe = parse_recipe(client.status(self.identity.run_id).recipe)
        self.model: nn.Module = build_model(self.recipe)
        self.data: DataSource = load_data(self.recipe, settings.data_path)
        self.trainer = InnerTrainer(self.model, self.recipe.train)
        self.blobs = BlobCache(settings.state_dir / "blobs", client)

    def _identity(self) -> Identity:
        path = self.settings.state_dir / "identity.json"
        if path.exists():
            saved = Identity(**json.loads(path.read_text()))
            if saved.run_id == self.client.run_id:
                log.info("resuming as worker %s of run %s", saved.worker_id, saved.run_id)
                return saved
        reply = self.client.register(self.settings.name)
        identity = Identity(run_id=self.client.run_id, worker_id=reply.worker_id, shard=reply.shard)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(identity.__dict__))
        tmp.replace(path)
        return identity

    def run(
        self,
        stop: threading.Event | None = None,
        on_contribution: Callable[[ContributionReply], None] | None = None,
    ) -> WorkerSummary:
        """Work until the run finishes (or ``stop`` is set)."""
        summary = WorkerSummary()
        while stop is None or not stop.is_set():
            lease = self.client.lease(self.identity.worker_id, wait_s=self.settings.wait_s)
            if lease.status == "done":
                break
            if lease.lease is None:  # wait: the round has our contribution already
                continue
            reply = self.work(lease.lease)
            summary.contributions.append(reply)
            if on_contribution is not None:
                on_contribution(reply)
        summary.bytes_up, summary.bytes_down = self.client.bytes_up, self.client.bytes_down
        return summary

    def work(self, lease: LeaseGrant) -> ContributionReply:
        """Train on one lease and upload the pseudo-gradient."""
        self.model.load_state_dict(self.tensors_of(lease))
        base = model_float_tensors(self.model)
        result = self.train(lease)
        delta = pseudo_gradient(base, self.model.state_dict())
        meta = contribution_meta(lease, self.identity.worker_id, result)
        reply = self.client.submit(meta, to_bytes(delta))
        log.info(
            "round %s: %s contribution (%d tokens in %.2f s of compute, train loss %.4f)%s",
            lease.round,
            reply.status,
            result.tokens,
            result.compute_s,
            result.mean_loss,
            f": {reply.reason}" if reply.reason else "",
        )
        return reply

    def tensors_of(self, lease: LeaseGrant) -> TensorDict:
        """The leased version's tensors, downloaded only if not held yet."""
        return from_bytes(self.blobs.get(lease.blob_sha256))

    def train(self, lease: LeaseGrant) -> InnerResult:
        shard = lease.shard if self.settings.data_path is None else None
        batches = self.data.train_batches(shard, self.recipe.train.batch_size, lease.seed)
        return self.trainer.train(batches, lease.inner_steps)


def contribution_meta(lease: LeaseGrant, worker_id: str, result: InnerResult) -> ContributionMeta:
    """One contribution per lease: its id is the lease id, so a retried upload is idempotent."""
    return ContributionMeta(
        contribution_id=lease.lease_id,
        lease_id=lease.lease_id,
        worker_id=worker_id,
        tokens=result.tokens,
        steps=result.steps,
        train_loss=result.mean_loss,
        compute_s=result.compute_s,
    )
