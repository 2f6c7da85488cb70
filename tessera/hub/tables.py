"""The hub's tables (SQLAlchemy ORM): providers and their tokens, runs, workers, versions,
merges, rounds, leases, contributions, the ledger, adapters, the pool (its members and the
providers' pledges), the commons (dataset versions, their derivations, access decisions) and
runs' events, with the row constructors the hub uses.

``SCHEMA_VERSION`` is raised on every change of these tables; ``tessera.hub.state`` upgrades
older databases to it.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 11  # raise on every change of the tables below


class Base(DeclarativeBase):
    pass


def new_id() -> str:
    """A new row id: 32 random hex digits."""
    return uuid.uuid4().hex


class Meta(Base):
    __tablename__ = "tessera_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class Provider(Base):
    """A person, company, collective or sponsor; a collective's members are providers."""

    __tablename__ = "providers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # person | company | collective | sponsor
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class Membership(Base):
    __tablename__ = "memberships"
    collective_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), primary_key=True)


class ApiToken(Base):
    """Only the sha256 of a token is stored; a revoked token stays, marked, for the record."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Run(Base):
    """A run; a modular run's modules are runs too, each with its own versions and rounds,
    pointing to the run they belong to (``parent_id``) by name (``module``)."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    recipe: Mapped[str] = mapped_column(Text)
    owner_id: Mapped[str] = mapped_column(ForeignKey("providers.id"))
    collective_id: Mapped[str | None] = mapped_column(ForeignKey("providers.id"), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | finished
    paused: Mapped[bool] = mapped_column(Boolean, default=False)  # by its owner: no new leases
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    outer_state_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    workers_registered: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    module: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # measured on the meta device
    # the last failure to close a round (or to load the run), shown in its status until a round closes
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    forked_from: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the version it started from


def new_run(run_id: str, name: str, recipe: str, owner_id: str, collective_id: str | None, now: float) -> Run:
    """An active run (or module) with no rounds done and no workers yet."""
    return Run(
        id=run_id,
        name=name,
        recipe=recipe,
        owner_id=owner_id,
        collective_id=collective_id,
        status="active",
        current_round=0,
        workers_registered=0,
        created_at=now,
        model_bytes=0,
        paused=False,
    )


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    index: Mapped[int] = mapped_column(Integer)  # registration order within the run
    shard: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ranks: Mapped[int] = mapped_column(Integer, default=1)  # torchrun ranks training as this worker
    member_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # a pool member's worker
    verified: Mapped[int] = mapped_column(Integer, default=0)  # contributions whose replay held
    flagged_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # its claims did not hold
    flag_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    held_datasets: Mapped[list[str]] = mapped_column(JSON, default=list)  # private versions it holds
    registered_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float] = mapped_column(Float)


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("run_id", "number"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    blob_sha: Mapped[str] = mapped_column(String(64))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    # the change from the parent version in the run's download codec (None for version 0)
    change_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    change_nbytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    contributions: Mapped[list[str]] = mapped_column(JSON, default=list)
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    merge_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # a version made by a merge


class MergeRecord(Base):
    """A merge of modules trained from one base into a target module, accepted (a new version of
    the target) or rejected (held-out loss got worse); inputs and evaluation kept either way."""

    __tablename__ = "merges"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)  # the modular run
    target_run_id: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # module, run_id, version_id, number
    base_version_id: Mapped[str] = mapped_column(String(32))  # the target's version it replaces
    val_loss_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_loss_after: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))  # accepted | rejected
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    version_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)


class RoundRecord(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    base_version_id: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    close_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    version_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    clipped: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # closes that failed (then restarted)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # the last failure
    # set while the round closes (its contributions fixed; uploads arriving now count in the next)
    closing_at: Mapped[float | None] = mapped_column(Float, nullable=True)


def new_round(run_id: str, number: int, base_version_id: str, started_at: float) -> RoundRecord:
    """An open round with zeroed counters (set here, so they can be incremented before a flush)."""
    return RoundRecord(
        run_id=run_id,
        number=number,
        base_version_id=base_version_id,
        started_at=started_at,
        accepted=0,
        rejected=0,
        tokens=0,
        bytes_in=0,
        bytes_out=0,
        failures=0,
    )


class Lease(Base):
    __tablename__ = "leases"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    worker_id: Mapped[str] = mapped_column(ForeignKey("workers.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[str] = mapped_column(String(32))
    inner_steps: Mapped[int] = mapped_column(Integer)
    issued_at: Mapped[float] = mapped_column(Float)
    deadline: Mapped[float] = mapped_column(Float)
    # open | used | void (its round's close failed: the worker leases again)
    state: Mapped[str] = mapped_column(String(16), default="open")
    pledge_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the pledge it delivers
    stop_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # its worker's window ends
    dataset_id: Mapped[str | None] = mapped_column(
        String(64), nullable=True
    )  # a dataset run's: what it trains on
    shard: Mapped[str | None] = mapped_column(String(200), nullable=True)  # a dataset run's shard


class Contribution(Base):
    __tablename__ = "contributions"
    __table_args__ = (UniqueConstraint("run_id", "id"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    worker_id: Mapped[str] = mapped_column(String(32))
    lease_id: Mapped[str] = mapped_column(String(32))
    round: Mapped[int] = mapped_column(Integer, index=True)
    base_version_number: Mapped[int] = mapped_column(Integer)
    blob_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
    steps: Mapped[int] = mapped_column(Integer)
    compute_s: Mapped[float] = mapped_column(Float, default=0.0)  # the worker's inner-step time
    train_loss: Mapped[float] = mapped_column(Float)
    norm: Mapped[float] = mapped_column(Float)
    weight: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))  # accepted | rejected
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    own_data: Mapped[bool] = mapped_column(Boolean, default=False)
    # replayed by the hub (tessera.hub.verify): pending | passed | failed; private: not replayable
    verified: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)


class LedgerEntry(Base):
    """Append-only: rows are only ever inserted. Per committed contribution, one ``compute``
    credit to the provider whose worker made it and one ``usage`` debit (the same amount, negative)
    to the run's owner; if the contribution's worker is later caught (``tessera.hub.verify``), a
    ``correction`` takes the credit back and a ``refund`` returns the owner's usage.

    ``amount`` is in PFLOP (10^15 floating-point operations of training: tokens x FLOPs per token);
    ``dataset_id`` is the dataset version the compute trained on (its lease's), for lineage.
    """

    __tablename__ = "ledger"
    __table_args__ = (UniqueConstraint("run_id", "contribution_id", "kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), index=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    contribution_id: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))  # compute | usage | correction | refund
    tokens: Mapped[int] = mapped_column(BigInteger)
    flops_per_token: Mapped[float] = mapped_column(Float)
    amount: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    dataset_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # what the compute trained on


class Adapter(Base):
    """A provider's fine-tune of a run's version (LoRA tensors): versioned per owner and name,
    private to its owner unless shared. The data it was trained on is only fingerprinted."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("run_id", "owner_id", "name", "number"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    number: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    base_version_id: Mapped[str] = mapped_column(String(32))
    base_version_number: Mapped[int] = mapped_column(Integer)
    blob_sha: Mapped[str] = mapped_column(String(64))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)  # rank, alpha, target modules
    data_fingerprint: Mapped[str] = mapped_column(String(64))
    data_tokens: Mapped[int] = mapped_column(BigInteger)
    steps: Mapped[int] = mapped_column(Integer)
    base_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    adapter_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class PoolMember(Base):
    """A worker serving the pool: the hub assigns it to runs. ``run_id`` is where it works now
    (since ``assigned_at``, for the pledge ``serving`` or, if None, for the pool)."""

    __tablename__ = "pool_members"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(64))  # what the provider calls this kind of node
    pinned_run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    collective_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # only its runs
    pledge_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the nodes pledge it is
    windows: Mapped[list[str]] = mapped_column(JSON)  # availability windows; [] : always
    holidays: Mapped[list[str]] = mapped_column(JSON)
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    serving: Mapped[str | None] = mapped_column(String(32), nullable=True)  # pledge id, or None: the pool
    assigned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    joined_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float] = mapped_column(Float)
    step_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # measured seconds per inner step


class Pledge(Base):
    """What a provider promised: ``nodes`` (that many of its workers of ``worker_kind``, within
    its windows) or a ``budget`` (inner steps or PFLOP), to a run, a collective's runs or the pool.
    What it delivered is read from the leases that served it."""

    __tablename__ = "pledges"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # nodes | budget
    target: Mapped[str] = mapped_column(String(16))  # run | collective | pool
    target_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    nodes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_kind: Mapped[str | None] = mapped_column(String(64), nullable=True)
    windows: Mapped[list[str]] = mapped_column(JSON)
    holidays: Mapped[list[str]] = mapped_column(JSON)
    steps: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    pflop: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # active | fulfilled | cancelled
    created_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Dataset(Base):
    """A dataset version, its id the Merkle root over its files (tessera.data.datasets); versioned
    per owner and name. A private version's files stay with its owner (only its id and statistics
    are here); the others' files are blobs at the hub once uploaded (``state`` ready)."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("owner_id", "name", "number"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    number: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    licence: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text)
    visibility: Mapped[str] = mapped_column(String(16))  # public | collective | contributors | private
    collective_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    threshold_pflop: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold_run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    stored: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[str] = mapped_column(String(16))  # uploading | ready
    file_count: Mapped[int] = mapped_column(Integer)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[list[list[Any]]] = mapped_column(JSON)  # [path, sha256, size]; [] when private
    transform: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a derived version's
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    code_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    deterministic: Mapped[bool] = mapped_column(Boolean, default=True)
    withdrawn_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    withdrawn_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    tainted_by: Mapped[list[str]] = mapped_column(JSON)  # withdrawn versions it derives from
    created_at: Mapped[float] = mapped_column(Float)


class DatasetBlob(Base):
    """A file of a dataset version that the hub holds for it: uploaded to it, or a file of another
    version its owner may read (only then does an upload need not be repeated)."""

    __tablename__ = "dataset_blobs"
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    sha: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class DatasetInput(Base):
    """An edge of the derivation graph: ``dataset_id`` was derived from ``input_id``."""

    __tablename__ = "dataset_inputs"
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    input_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)


class AccessDecision(Base):
    """A grant or refusal of a provider's access to a dataset version, recorded when it first
    differs from the last one recorded for the pair (append-only)."""

    __tablename__ = "access_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(String(64), index=True)
    provider_id: Mapped[str] = mapped_column(String(32), index=True)
    granted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Float)


class AccessRevocation(Base):
    """An owner's revocation of one provider's access to a dataset version, whatever it earned."""

    __tablename__ = "access_revocations"
    dataset_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    by_id: Mapped[str] = mapped_column(String(32))
    at: Mapped[float] = mapped_column(Float)


class RunEvent(Base):
    """Something a run's owners are told (a dataset it trains on was withdrawn), in its feed."""

    __tablename__ = "run_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(String(64), nullable=True)  # e.g. a dataset id
    at: Mapped[float] = mapped_column(Float)


class RunDataset(Base):
    """A dataset version a run trains on (named in its recipe), with its mixing weight."""

    __tablename__ = "run_datasets"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    weight: Mapped[float] = mapped_column(Float)
    position: Mapped[int] = mapped_column(Integer)  # in the recipe
    steps_issued: Mapped[int] = mapped_column(BigInteger, default=0)  # inner steps leased on it
