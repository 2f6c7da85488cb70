"""Typed messages between hub and workers, validated on arrival."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from tessera.names import PRINTABLE_PATTERN, check_unicode

ID = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
NAME_PATTERN = r"^[A-Za-z0-9_.@ -]+$"
# Names and labels others read: no control or format characters (bidi overrides), tessera.names.
Printable = Annotated[str, Field(pattern=PRINTABLE_PATTERN), AfterValidator(check_unicode)]


def whole(value: Any) -> Any:
    """A JSON number with no fraction (8.0) is an integer, as JSON Schema counts it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(whole)]  # messages are strict otherwise: no "8", no true
MAX_COUNT = 2**53  # tokens and other counts: exact in a float, and in a BIGINT column
MAX_STEPS = 1_000_000  # as tessera.core.inner.MAX_INNER_STEPS
MAX_SECONDS = 30 * 24 * 3600.0  # as the longest lease (tessera.recipe.MAX_WAIT_S)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no coercion: 0 is not false


class CreateRunReply(Message):
    run_id: str


class ProviderInfo(Message):
    provider_id: str
    name: str
    kind: str
    is_admin: bool
    collectives: list[str]


class CreateProviderRequest(Message):
    name: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN)
    kind: Literal["person", "company", "collective", "sponsor"] = "person"
    is_admin: bool = False


class TokenReply(Message):
    token_id: str
    token: str = Field(description="shown only once; the hub keeps its sha256")


class CreatedProvider(Message):
    provider: ProviderInfo
    token_id: str
    token: str


class TokenRequest(Message):
    label: Printable = Field(default="", max_length=200)


class MemberRequest(Message):
    member: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN, description="provider id or name")


class RegisterRequest(Message):
    name: Printable = Field(default="worker", min_length=1, max_length=200)
    module: str | None = Field(default=None, min_length=1, max_length=64, pattern=NAME_PATTERN)
    ranks: Whole = Field(default=1, ge=1, le=65_536, description="torchrun ranks training as this worker")


class RegisterReply(Message):
    worker_id: str
    shard: str | None
    run_id: str | None = None  # where the worker works: the run, or the module of a modular run
    module: str | None = None


class LeaseRequest(Message):
    worker_id: str = ID
    wait_s: float = Field(default=0.0, ge=0.0, le=30.0)


class FrozenModule(Message):
    """A module the leased one trains on top of, frozen at this version."""

    module: str
    run_id: str
    version_number: int
    blob_sha256: str
    nbytes: int


class LeaseGrant(Message):
    """A unit of work: train ``inner_steps`` from this version, upload before ``deadline``."""

    lease_id: str
    round: int
    version_id: str
    version_number: int
    blob_sha256: str
    nbytes: int = 0  # of the whole version
    change_sha256: str | None = None  # the version's change from its parent, if any
    change_nbytes: int | None = None
    inner_steps: int
    deadline: float
    shard: str | None
    seed: int
    module: str | None = None  # of a modular run: the module this lease trains
    frozen: list[FrozenModule] = Field(default_factory=list)


class LeaseReply(Message):
    status: Literal["work", "wait", "done"]
    retry_after_s: float = 0.0
    lease: LeaseGrant | None = None


class ContributionMeta(Message):
    """Sent as JSON in the ``X-Tessera-Contribution`` header beside the safetensors body."""

    contribution_id: str = ID
    lease_id: str = ID
    worker_id: str = ID
    tokens: Whole = Field(ge=1, le=MAX_COUNT, description="target elements trained on (bounded by the lease)")
    steps: Whole = Field(ge=1, le=MAX_STEPS, description="inner steps (at most the lease's)")
    train_loss: float = Field(allow_inf_nan=False)
    compute_s: float = Field(ge=0.0, le=MAX_SECONDS, allow_inf_nan=False)
    codec: str = Field(default="fp32", max_length=16, pattern=r"^[a-z0-9.]+$")


ContributionStatus = Literal["accepted", "rejected", "pending"]


class ContributionReply(Message):
    contribution_id: str
    status: ContributionStatus = Field(
        description="accepted or rejected: final; pending: it counts unless its round's direction "
        "check (aggregation.min_cosine) drops it when the round closes"
    )
    reason: str | None = None
    round: int
    weight: float
    duplicate: bool = False
    final: bool = Field(True, description="whether ``status`` is final (false while pending)")


class ContributionInfo(Message):
    contribution_id: str
    worker_id: str
    round: int
    base_version_number: int
    status: ContributionStatus
    reason: str | None
    tokens: int
    norm: float
    weight: float
    nbytes: int


ModuleName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]


class AdapterMeta(Message):
    """Sent as JSON in the ``X-Tessera-Adapter`` header beside an adapter's safetensors body: a
    LoRA fine-tune of one of the run's versions, on data the owner keeps (only fingerprinted)."""

    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    base_version: Whole = Field(ge=0, le=MAX_COUNT)
    rank: Whole = Field(ge=1, le=1024)
    alpha: float = Field(gt=0.0, le=1e6, allow_inf_nan=False)
    target_modules: list[ModuleName] = Field(min_length=1, max_length=1024)
    data_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 over the data's documents")
    data_tokens: Whole = Field(ge=0, le=MAX_COUNT)
    steps: Whole = Field(ge=1, le=MAX_STEPS)
    base_loss: float | None = Field(default=None, allow_inf_nan=False, description="own held-out, before")
    adapter_loss: float | None = Field(default=None, allow_inf_nan=False, description="own held-out, after")
    shared: bool = Field(default=False, description="readable by the run's readers; else owner only")


class AdapterInfo(Message):
    adapter_id: str
    run_id: str
    name: str
    number: int
    owner: str
    shared: bool
    parent_id: str | None
    base_version: int
    base_version_id: str
    blob_sha256: str
    nbytes: int
    rank: int
    alpha: float
    target_modules: list[str]
    data_fingerprint: str
    data_tokens: int
    steps: int
    base_loss: float | None
    adapter_loss: float | None
    created_at: float


class VersionInfo(Message):
    version_id: str
    number: int
    blob_sha256: str
    nbytes: int
    change_sha256: str | None = None  # the change from the parent, in the run's download codec
    change_nbytes: int | None = None
    parent_id: str | None
    contributions: list[str]
    val_loss: float | None
    created_at: float
    merge_id: str | None = None  # set when a merge made this version (see /merges)


class MergeRequest(Message):
    """Merge modules trained from one base into ``target`` (tessera.core.merging)."""

    target: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    inputs: list[Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]] = Field(
        min_length=1, max_length=64
    )
    method: Literal["average", "task_arithmetic", "ties"] = "ties"
    weights: list[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] = Field(
        default_factory=list, max_length=64
    )
    scale: float = Field(default=1.0, allow_inf_nan=False)
    density: float = Field(default=0.2, ge=1e-6, le=1.0)


class MergeInput(Message):
    module: str
    run_id: str
    version_id: str
    number: int


class MergeReply(Message):
    merge_id: str
    status: Literal["accepted", "rejected"]
    target: str
    method: str
    inputs: list[MergeInput]
    val_loss_before: float | None  # the target's latest version
    val_loss_after: float  # the merged tensors, on the target's held-out data
    reason: str | None = None
    version: VersionInfo | None = None  # the target's new version, when accepted


class RoundMetrics(Message):
    number: int
    status: Literal["open", "closing", "closed"] = Field(
        description="closing: its contributions are fixed and being aggregated; uploads count in the next"
    )
    base_version_id: str
    version_id: str | None
    val_loss: float | None
    train_loss: float | None
    accepted: int
    rejected: int
    clipped: int
    tokens: int
    bytes_in: int
    bytes_out: int
    wall_s: float | None
    close_reason: str | None
    failures: int = 0  # closes of this round that failed; each restarted it (see error)
    error: str | None = None  # why the last one failed


class RunStatus(Message):
    run_id: str
    name: str
    status: Literal["active", "finished"]
    error: str | None = None  # the last failure to close a round or load the run, until one closes
    error_at: float | None = None
    rounds_total: int
    rounds_done: int
    current_round: int
    latest_version: VersionInfo | None  # None for a modular run: see its modules
    initial_val_loss: float | None
    workers: int
    recipe: str
    module: str | None = None  # a module of the run ``parent_id``
    parent_id: str | None = None
    modules: list[RunStatus] = Field(default_factory=list)  # of a modular run, dependencies first


class Balance(Message):
    provider_id: str
    name: str
    kind: str
    pflop: float = Field(description="credited training compute, in PFLOP (10^15 FLOPs)")
    tokens: int
    contributions: int


class LedgerReport(Message):
    """Balances per provider and per collective (a collective's is the sum of its members')."""

    providers: list[Balance]
    collectives: list[Balance]


class ErrorBody(Message):
    error: str
    detail: str


class ProbeReply(Message):
    nbytes: int
