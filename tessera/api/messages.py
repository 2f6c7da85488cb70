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
    member_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$", description="as a pool worker")
    held_datasets: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=list,
        max_length=64,
        description="private dataset versions it holds (checked by hashing)",
    )


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
    stop_at: float | None = Field(
        default=None, description="unix time to stop training and upload what was done (a window ends)"
    )
    dataset_id: str | None = Field(default=None, description="a dataset run's: the version the shard is of")


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
    own_data: bool = Field(
        default=False, description="trained on the worker's own data: nobody can replay it"
    )


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
    verified: str | None = Field(
        default=None, description="replayed by the hub: pending | passed | failed; private: not replayable"
    )


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
    paused: bool = False
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
    marks: list[str] = Field(default_factory=list, description="withdrawn data the run trains on")


class Balance(Message):
    provider_id: str
    name: str
    kind: str
    pflop: float = Field(description="credited training compute, in PFLOP (10^15 FLOPs)")
    tokens: int
    contributions: int
    used_pflop: float = Field(default=0.0, description="compute the provider's runs used, in PFLOP")

    @property
    def balance_pflop(self) -> float:
        """What the provider gave minus what its runs used."""
        return self.pflop - self.used_pflop


class LedgerReport(Message):
    """Balances per provider and per collective (a collective's is the sum of its members')."""

    providers: list[Balance]
    collectives: list[Balance]


class ErrorBody(Message):
    error: str
    detail: str


class ProbeReply(Message):
    nbytes: int


# --- the pool ------------------------------------------------------------------------------

WindowSpec = Annotated[str, Field(min_length=1, max_length=100, pattern=PRINTABLE_PATTERN)]
DateSpec = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]
KindLabel = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
HEX_ID = Field(default=None, pattern=r"^[0-9a-f]{32}$")


class PoolJoinRequest(Message):
    """A worker offering itself to the pool: what it is, when it may work, where it may go."""

    name: Printable = Field(default="worker", min_length=1, max_length=200)
    kind: KindLabel = "cpu"
    windows: list[WindowSpec] = Field(default_factory=list, max_length=32, description="[] : always")
    holidays: list[DateSpec] = Field(default_factory=list, max_length=400)
    pinned_run_id: str | None = HEX_ID
    collective: str | None = Field(default=None, min_length=1, max_length=200, pattern=NAME_PATTERN)
    pledge_id: str | None = HEX_ID


class PoolMemberInfo(Message):
    member_id: str
    provider: str
    name: str
    kind: str
    windows: list[str]
    holidays: list[str]
    pinned_run_id: str | None
    collective: str | None
    pledge_id: str | None
    run_id: str | None = Field(description="the run it works on now")
    serving: str | None = Field(description="the pledge it works for now (None: the pool)")
    assigned_at: float | None
    last_seen_at: float


class AssignRequest(Message):
    exclude: list[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]] = Field(
        default_factory=list, max_length=256, description="runs this machine refuses (code it does not trust)"
    )


class Assignment(Message):
    """Where a pool worker works now: a run (and its worker id there, if it was in it before),
    or nowhere for ``retry_after_s`` (and why)."""

    status: Literal["work", "idle"]
    run_id: str | None = None
    worker_id: str | None = None
    serving: str | None = None
    retry_after_s: float = 0.0
    reason: str = ""


class QueueEntry(Message):
    """A run claiming workers from the pool, as fair share sees it now."""

    run_id: str
    name: str
    owner: str
    account: str = Field(description="the collective it counts against, or its owner")
    priority: float = Field(description="the run's own priority ([run] priority)")
    balance_pflop: float = Field(description="the account's decayed balance")
    score: float = Field(description="priority plus balance points: higher is served first")
    ahead: int = Field(description="runs with a higher score")
    entitled: float = Field(description="pool workers fair share gives it now")
    workers: int = Field(description="pool workers on it now")
    demand: float = Field(description="workers it can use")
    reason: str


class QueueReport(Message):
    pool_workers: int
    runs: list[QueueEntry]


class PledgeRequest(Message):
    """``nodes`` workers (of ``worker_kind``, within ``windows``), or a budget of ``steps`` inner
    steps or ``pflop``, to a run, a collective's runs or the whole pool."""

    target: Literal["run", "collective", "pool"] = "pool"
    target_id: str | None = Field(default=None, min_length=1, max_length=200, pattern=NAME_PATTERN)
    nodes: Whole | None = Field(default=None, ge=1, le=100_000)
    worker_kind: KindLabel | None = None
    windows: list[WindowSpec] = Field(default_factory=list, max_length=32)
    holidays: list[DateSpec] = Field(default_factory=list, max_length=400)
    steps: Whole | None = Field(default=None, ge=1, le=MAX_COUNT)
    pflop: float | None = Field(default=None, gt=0.0, le=1e12, allow_inf_nan=False)


class PledgeInfo(Message):
    pledge_id: str
    provider: str
    kind: Literal["nodes", "budget"]
    target: str
    target_id: str | None
    nodes: int | None
    worker_kind: str | None
    windows: list[str]
    holidays: list[str]
    steps: int | None
    pflop: float | None
    status: str
    created_at: float
    ended_at: float | None
    members: int = Field(description="pool workers bound to it now (nodes pledges)")
    delivered_steps: int
    delivered_pflop: float
