"""What a worker holds for the run it works on, shared by both modes of its loop.

The session joins the run: it shows the code the run's recipe would run here and refuses a run
whose factories, or data folder, its owner does not trust (``WorkerSettings.trust``): nothing of
the recipe is imported or read until then. It remembers the worker's identity and blobs in
``state_dir``, so a restarted worker picks up the run where it left. It holds the model, its
inner trainer, the version last leased (to rebuild newer ones from their changes) and the
frozen modules a module trains on, and turns trained weights into a contribution. It builds the
model before it registers, so a worker that cannot build it is never counted in the run. What it
is doing (joining, each inner step, each contribution) it tells its ``Reporter``: by default
logged, drawn as a progress bar or printed as plain lines by the CLI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from torch import nn

from tessera.api.client import HubAPI
from tessera.api.messages import ContributionMeta, ContributionReply, LeaseGrant
from tessera.blobs import FileBlobStore
from tessera.core.codecs import ErrorFeedback, apply_change, codec
from tessera.core.inner import Batch, InnerResult, InnerTrainer, StepDone
from tessera.core.modules import freeze_outside
from tessera.core.pseudo_gradient import pseudo_gradient
from tessera.core.tensors import TensorDict, clone_tensors, from_bytes, model_float_tensors, to_bytes
from tessera.data.mixture import PRIVATE
from tessera.data.source import DataSource
from tessera.errors import DataError
from tessera.recipe import Recipe, parse_recipe
from tessera.task import (
    DEFAULT_TRUST,
    Code,
    build_model,
    load_data,
    model_bytes,
    model_tensors,
    require_trusted,
)
from tessera.trust import Trust
from tessera.worker.datasets import DatasetCache, HubFiles

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
    member_id: str | None = None  # as a pool worker (tessera.worker.pool)


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
class Step:
    """Where a lease's inner steps stand after one of them."""

    round: int
    done: int  # steps done of this lease
    total: int  # the lease's steps (H)
    tokens: int  # target elements trained on so far
    loss: float  # the train loss of the last step
    compute_s: float  # seconds of inner steps so far

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.compute_s if self.compute_s > 0 else 0.0

    @property
    def eta_s(self) -> float:
        """Seconds until the lease's last step, at the pace so far."""
        return (self.total - self.done) * self.compute_s / self.done if self.done else 0.0


class Reporter(Protocol):
    """Whom a worker tells what it is doing: the CLI draws it; ``LogReporter`` logs it."""

    def phase(self, text: str) -> None:
        """What the worker does now: joining, building the model, downloading a version."""

    def step(self, step: Step) -> None:
        """An inner step is done."""

    def contribution(self, reply: ContributionReply, result: InnerResult) -> None:
        """A contribution was uploaded; ``reply`` is the hub's verdict."""


class LogReporter:
    """The library's default reporter: phases and contributions as INFO log lines."""

    def phase(self, text: str) -> None:
        log.info("%s", text)

    def step(self, step: Step) -> None:
        """Not logged: one line per inner step would drown the log."""

    def contribution(self, reply: ContributionReply, result: InnerResult) -> None:
        log.info("%s", contribution_line(reply, result))


def contribution_line(reply: ContributionReply, result: InnerResult) -> str:
    """A contribution and the hub's verdict, in one line."""
    speed = result.tokens / result.compute_s if result.compute_s > 0 else 0.0
    return (
        f"round {reply.round}: {reply.status} contribution ({result.steps} steps, {result.tokens} tokens "
        f"in {result.compute_s:.2f} s of compute, {speed:,.0f} tokens/s, train loss {result.mean_loss:.4f})"
        + (f": {reply.reason}" if reply.reason else "")
    )


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

    def __init__(self, client: HubAPI, settings: WorkerSettings, reporter: Reporter | None = None) -> None:
        self.client = client
        self.settings = settings
        self.reporter: Reporter = reporter or LogReporter()
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        recipe = parse_recipe(client.status(client.run_id).recipe)
        self.code = require_trusted(recipe, settings.trust)
        runs_here = describe(self.code, recipe, settings.data_path)
        self.reporter.phase(f"run {client.run_id} runs here: {runs_here}")
        self.reporter.phase("loading the data")
        self.held_datasets: list[str] = []  # the run's private dataset versions this worker holds
        self.data: DataSource = self._load_data(recipe)
        saved = self._saved_identity()
        wanted = saved.module if saved is not None else settings.module
        model = self._build_before_joining(recipe, wanted)
        self.identity = saved or self._register()
        client.select_run(self.identity.run_id)
        module = self.identity.module
        self.recipe: Recipe = recipe.for_module(module) if module else recipe
        if model is None or module != wanted:  # the hub chose the module: its model is built now
            model = build_model(self.recipe, settings.trust)
        self.model: nn.Module = model
        self.trained_names = trained_names(self.model, self.recipe, module)
        self.trainer = InnerTrainer(self.model, self.recipe.train)
        self.blobs = BlobCache(settings.state_dir / "blobs", client)
        self.frozen = Frozen(FileBlobStore(settings.state_dir / "frozen"), client)
        self.feedback = ErrorFeedback(codec(self.recipe.communication.codec))  # residual: in memory only
        self.held: Held | None = initial_version(self.model, self.trained_names)

    def _load_data(self, recipe: Recipe) -> DataSource:
        """The recipe's data: its source reading the worker's own folder (or the recipe's path);
        for a run on dataset versions, those versions as the leases need them, the worker's own
        folder being its copy of one of the run's private versions."""
        settings = self.settings
        if not recipe.data.datasets:
            return load_data(recipe, settings.data_path, settings.trust)
        local = Path(settings.data_path).expanduser() if settings.data_path else None
        files = HubFiles(self.client, DatasetCache(settings.state_dir / "datasets"), local)
        if files.local_id is not None:
            if files.local_id not in recipe.data.datasets:
                raise DataError(
                    f"the data at {local} is dataset version {files.local_id[:16]}, which this run does not "
                    "train on; leave out --data (the run's datasets come from the hub) or register it"
                )
            self.held_datasets = [files.local_id]
        return load_data(recipe, None, settings.trust, datasets=files)

    def _build_before_joining(self, recipe: Recipe, module: str | None) -> nn.Module | None:
        """The model this worker trains, built before it registers: a worker that cannot build it
        fails here, never counted in the run. When the hub is to choose the module (a modular run,
        no --module), the factory is only tried on the meta device and None is returned."""
        self.reporter.phase(f"building the model ({recipe.model.factory})")
        if recipe.modules and module is None:
            model_bytes(recipe, self.settings.trust)
            return None
        return build_model(recipe.for_module(module) if module else recipe, self.settings.trust)

    def _saved_identity(self) -> Identity | None:
        """The identity this worker registered with before, if it was in this run."""
        path = self.settings.state_dir / "identity.json"
        if not path.exists():
            return None
        saved = Identity(**json.loads(path.read_text()))
        if (saved.joined or saved.run_id) != self.client.run_id:
            return None
        self.reporter.phase(f"resuming as worker {saved.worker_id} of run {saved.run_id}")
        return saved

    def _register(self) -> Identity:
        """Join the run as a new worker, and remember it in ``state_dir``."""
        settings = self.settings
        reply = self.client.register(
            settings.name, settings.module, settings.ranks, settings.member_id, self.held_datasets
        )
        identity = Identity(
            run_id=reply.run_id or self.client.run_id,
            worker_id=reply.worker_id,
            shard=reply.shard,
            joined=self.client.run_id,
            module=reply.module,
        )
        where = f"module {reply.module} (run {identity.run_id})" if reply.module else f"run {identity.run_id}"
        self.reporter.phase(f"joined {where} as worker {identity.worker_id}, shard {reply.shard}")
        path = self.settings.state_dir / "identity.json"
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
            self.reporter.phase(f"downloading version {lease.version_number} ({size(lease.nbytes)})")
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
        shard = lease.shard if self.settings.data_path is None or self.recipe.data.datasets else None
        return self.data.train_batches(shard, self.recipe.train.batch_size, lease.seed)

    def train(self, lease: LeaseGrant) -> InnerResult:
        """The lease's H inner steps, each told to the reporter; fewer if the lease says to stop
        at a time (its worker's window ends), and what was done is uploaded as usual."""
        total, pace = lease.inner_steps, Pace(lease.stop_at)

        def told(s: StepDone) -> None:
            pace.step_s = s.elapsed_s / s.done
            self.reporter.step(Step(lease.round, s.done, total, s.tokens, s.loss, s.elapsed_s))

        lr_scale = self.recipe.schedule.lr_scale(lease.round, total)
        stop = pace.stop if lease.stop_at else None
        return self.trainer.train(self.batches(lease), total, told, stop=stop, lr_scale=lr_scale)

    def contribution(
        self, lease: LeaseGrant, base: TensorDict, result: InnerResult
    ) -> tuple[ContributionMeta, bytes]:
        """The upload of ``result``: the weights trained since ``base`` as the run's wire format."""
        delta = pseudo_gradient(base, self.model.state_dict())
        own = self.settings.data_path is not None
        if self.recipe.data.datasets:  # only a private version's shard is the worker's own data
            own = (lease.shard or "").endswith(f"-{PRIVATE}")
        meta = contribution_meta(lease, self.identity.worker_id, result, self.feedback.codec.name, own)
        return meta, to_bytes(self.encode(delta))


@dataclass
class Pace:
    """When to stop a lease that must end by ``stop_at``: before a step that would not finish
    by then, at the pace of the steps so far."""

    stop_at: float | None
    step_s: float = 0.0

    def stop(self) -> bool:
        return self.stop_at is not None and time.time() + self.step_s >= self.stop_at


def describe(code: list[Code], recipe: Recipe, data_path: str | None) -> str:
    """What a run executes and reads on this machine, in one line."""
    where = data_path or recipe.data.path or "the data source's own default"
    calls = "; ".join(f"{c.role} {c.spec} ({c.origin})" for c in code)
    return f"{calls}; data read from {where}"


def size(nbytes: int) -> str:
    """``nbytes`` for people: 12 kB, 3.4 MB, 1.20 GB."""
    if nbytes < 1e6:
        return f"{nbytes / 1e3:.0f} kB"
    return f"{nbytes / 1e6:.1f} MB" if nbytes < 1e9 else f"{nbytes / 1e9:.2f} GB"


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
    lease: LeaseGrant, worker_id: str, result: InnerResult, codec_name: str = "fp32", own_data: bool = False
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
        own_data=own_data,
    )
