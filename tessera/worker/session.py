"""What a worker holds for the run it works on, shared by both modes of its loop.

The session joins the run: it shows the code the run's recipe would run here and refuses a run
whose factories, or data folder, its owner does not trust (``WorkerSettings.trust``): nothing of
the recipe is imported or read until then. It remembers the worker's identity and blobs in
``state_dir``, so a restarted worker picks up the run where it left. It holds the model, its
inner trainer, the version last leased (to rebuild newer ones from their changes) and the
frozen modules a module trains on, and turns trained weights into a contribution.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from tessera.api.client import HubAPI
from tessera.api.messages import ContributionMeta, ContributionReply, LeaseGrant
from tessera.blobs import FileBlobStore
from tessera.core.codecs import ErrorFeedback, apply_change, codec
from tessera.core.inner import Batch, InnerResult, InnerTrainer
from tessera.core.modules import freeze_outside
from tessera.core.pseudo_gradient import pseudo_gradient
from tessera.core.tensors import TensorDict, clone_tensors, from_bytes, model_float_tensors, to_bytes
from tessera.data.source import DataSource
from tessera.recipe import Recipe, parse_recipe
from tessera.task import DEFAULT_TRUST, Code, build_model, load_data, model_tensors, require_trusted
from tessera.trust import Trust

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    state_dir: Path
    name: str = "worker"
    data_path: str | None = None  # the worker's own data; None: the recipe's data source
    wait_s: float = 10.0
    module: str | None = None  # of a modular run: the module to train (None: the hub picks)
    trust: Trust = DEFAULT_TRUST  # the code and data folders this machine's owner allows
    ranks: int = 1  # torchrun ranks training as this worker


@dataclass
class WorkerSummary:
    contributions: list[ContributionReply] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    compute_s: float = 0.0  # inner steps only
    wall_s: float = 0.0
    started_at: float = 0.0  # unix time when the loop began to work

    @property
    def utilization(self) -> float:
        """Share of the worker's wall time spent in inner steps."""
        return self.compute_s / self.wall_s if self.wall_s else 0.0


@dataclass(frozen=True)
class Held:
    """The version a worker holds, to rebuild newer ones from their changes."""

    number: int
    sha: str
    tensors: TensorDict


@dataclass(frozen=True)
class Identity:
    run_id: str  # where the worker works: the run, or one module of a modular run
    worker_id: str
    shard: str | None
    joined: str = ""  # the run the worker was started on (a modular run's id); "" : run_id
    module: str | None = None


class BlobCache:
    """The version blobs a worker holds; only missing ones are downloaded."""

    def __init__(self, root: Path, client: HubAPI) -> None:
        self.store = FileBlobStore(root)
        self.client = client

    def get(self, sha: str) -> bytes:
        if self.store.has(sha):
            return self.store.get(sha)
        data = self.client.blob(sha)
        self.keep(data)
        return data

    def keep(self, data: bytes) -> None:
        """Hold ``data`` (a version's blob) instead of any other."""
        self.prune(keep=self.store.put(data))

    def prune(self, keep: str) -> None:
        for path in self.store.root.glob("*/*"):
            if path.name != keep:
                path.unlink(missing_ok=True)


class WorkSession:
    """A worker's place in one run (or module): its identity, recipe, model and trainer, the
    version it holds and the frozen modules under it; ``held`` is always the latest version leased."""

    def __init__(self, client: HubAPI, settings: WorkerSettings) -> None:
        self.client = client
        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        recipe = parse_recipe(client.status(client.run_id).recipe)
        self.code = require_trusted(recipe, settings.trust)
        log.info("run %s runs here: %s", client.run_id, describe(self.code, recipe, settings.data_path))
        self.data: DataSource = load_data(recipe, settings.data_path, settings.trust)
        self.identity = self._identity()
        client.select_run(self.identity.run_id)
        module = self.identity.module
        self.recipe: Recipe = recipe.for_module(module) if module else recipe
        self.model: nn.Module = build_model(self.recipe, settings.trust)
        self.trained_names = trained_names(self.model, self.recipe, module)
        self.trainer = InnerTrainer(self.model, self.recipe.train)
        self.blobs = BlobCache(settings.state_dir / "blobs", client)
        self.frozen = Frozen(FileBlobStore(settings.state_dir / "frozen"), client)
        self.feedback = ErrorFeedback(codec(self.recipe.communication.codec))  # residual: in memory only
        self.held: Held | None = initial_version(self.model, self.trained_names)

    def _identity(self) -> Identity:
        path = self.settings.state_dir / "identity.json"
        if path.exists():
            saved = Identity(**json.loads(path.read_text()))
            if (saved.joined or saved.run_id) == self.client.run_id:
                log.info("resuming as worker %s of run %s", saved.worker_id, saved.run_id)
                return saved
        reply = self.client.register(self.settings.name, self.settings.module, self.settings.ranks)
        identity = Identity(
            run_id=reply.run_id or self.client.run_id,
            worker_id=reply.worker_id,
            shard=reply.shard,
            joined=self.client.run_id,
            module=reply.module,
        )
        if reply.module:
            log.info("training module %s (run %s) on shard %s", reply.module, identity.run_id, reply.shard)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(identity.__dict__))
        tmp.replace(path)
        return identity

    def load(self, version: TensorDict, lease: LeaseGrant) -> None:
        """The model := the leased version, on top of the frozen modules it depends on."""
        frozen = self.frozen.tensors(lease)
        self.model.load_state_dict({**frozen, **version}, strict=not lease.module)

    def trained(self) -> TensorDict:
        """The float tensors this worker trains (the whole model, or its module's)."""
        return {k: v for k, v in model_float_tensors(self.model).items() if k in self.trained_names}

    def encode(self, delta: TensorDict) -> TensorDict:
        """The run's wire format; with error feedback, what the codec leaves out goes next round."""
        if self.recipe.communication.error_feedback:
            return self.feedback.encode(delta)[0]
        return self.feedback.codec.encode(delta)

    def tensors_of(self, lease: LeaseGrant) -> TensorDict:
        """The leased version: the one held, or rebuilt from it and the changes since (when they
        are smaller than the whole), else the whole blob (cached by sha256)."""
        held = self.held
        if held is not None and held.number < lease.version_number:
            rebuilt = self.rebuild(held, lease)
            if rebuilt is not None:
                held = rebuilt
        if held is None or held.sha != lease.blob_sha256:
            held = Held(
                lease.version_number, lease.blob_sha256, from_bytes(self.blobs.get(lease.blob_sha256))
            )
        self.held = held
        return clone_tensors(held.tensors)

    def rebuild(self, held: Held, lease: LeaseGrant) -> Held | None:
        """The leased version from the held one plus each version's change; None if the changes
        are not smaller than the whole or the result does not match the version's sha256."""
        changes = self.changes_since(held.number, lease)
        sizes = [n for _, n in changes]
        if any(n is None for n in sizes) or sum(n or 0 for n in sizes) >= lease.nbytes:
            return None
        download = codec(self.recipe.communication.download_codec)
        tensors = held.tensors
        for sha, _ in changes:
            assert sha is not None  # checked with the sizes
            wire = from_bytes(self.client.blob(sha))
            shapes = {k: v.shape for k, v in tensors.items() if v.is_floating_point()}
            tensors = apply_change(tensors, download.decode(wire, shapes))
        blob = to_bytes(tensors)
        if hashlib.sha256(blob).hexdigest() != lease.blob_sha256:
            log.warning(
                "version %d rebuilt from changes does not match its sha256; downloading it whole",
                lease.version_number,
            )
            return None
        self.blobs.keep(blob)
        return Held(lease.version_number, lease.blob_sha256, tensors)

    def changes_since(self, number: int, lease: LeaseGrant) -> list[tuple[str | None, int | None]]:
        """(sha256, bytes) of the changes from version ``number`` to the leased one; the lease
        names the last, so a worker one version behind asks nothing more."""
        earlier = range(number + 1, lease.version_number)
        infos = [self.client.version(self.identity.run_id, n) for n in earlier]
        return [(i.change_sha256, i.change_nbytes) for i in infos] + [
            (lease.change_sha256, lease.change_nbytes)
        ]

    def batches(self, lease: LeaseGrant) -> Iterator[Batch]:
        """The lease's batches: its shard of the recipe's data, or all of the worker's own data."""
        shard = lease.shard if self.settings.data_path is None else None
        return self.data.train_batches(shard, self.recipe.train.batch_size, lease.seed)

    def contribution(
        self, lease: LeaseGrant, base: TensorDict, result: InnerResult
    ) -> tuple[ContributionMeta, bytes]:
        """The upload of ``result``: the weights trained since ``base`` as the run's wire format."""
        delta = pseudo_gradient(base, self.model.state_dict())
        meta = contribution_meta(lease, self.identity.worker_id, result, self.feedback.codec.name)
        return meta, to_bytes(self.encode(delta))


def describe(code: list[Code], recipe: Recipe, data_path: str | None) -> str:
    """What a run executes and reads on this machine, in one line."""
    where = data_path or recipe.data.path or "the data source's own default"
    calls = "; ".join(f"{c.role} {c.spec} ({c.origin})" for c in code)
    return f"{calls}; data read from {where}"


def initial_version(model: nn.Module, names: set[str] | None = None) -> Held:
    """Version 0 (of the model, or of the module made of ``names``) as built here from the
    recipe's seed: when its sha256 matches the hub's, it is never downloaded (on another
    platform the bytes may differ; then it is)."""
    tensors = {k: v for k, v in model_tensors(model).items() if names is None or k in names}
    return Held(0, hashlib.sha256(to_bytes(tensors)).hexdigest(), tensors)


def trained_names(model: nn.Module, recipe: Recipe, module: str | None) -> set[str]:
    """Names of the tensors a worker trains; a module's worker freezes every other parameter."""
    if module is None:
        return set(model.state_dict())
    return freeze_outside(model, recipe.modules, module)


class Frozen:
    """The frozen modules a lease trains on top of, downloaded once (kept in ``store``)."""

    def __init__(self, store: FileBlobStore, client: HubAPI) -> None:
        self.store = store
        self.client = client
        self.loaded: dict[str, TensorDict] = {}

    def tensors(self, lease: LeaseGrant) -> TensorDict:
        out: TensorDict = {}
        for dep in lease.frozen:
            sha = dep.blob_sha256
            if sha not in self.loaded:
                if not self.store.has(sha):
                    self.store.put(self.client.blob(sha, dep.run_id))
                self.loaded[sha] = from_bytes(self.store.get(sha))
            out.update(self.loaded[sha])
        return out


def contribution_meta(
    lease: LeaseGrant, worker_id: str, result: InnerResult, codec_name: str = "fp32"
) -> ContributionMeta:
    """One contribution per lease: its id is the lease id, so a retried upload is idempotent."""
    return ContributionMeta(
        contribution_id=lease.lease_id,
        lease_id=lease.lease_id,
        worker_id=worker_id,
        tokens=result.tokens,
        steps=result.steps,
        train_loss=result.mean_loss,
        compute_s=result.compute_s,
        codec=codec_name,
    )
