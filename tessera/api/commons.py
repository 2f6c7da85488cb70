"""Typed messages of the commons: dataset versions (registration, files, derivations), their
withdrawal, and access to them (explained, revoked)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from tessera.api.messages import HEX_ID, MAX_COUNT, NAME_PATTERN, Message, Printable, Whole

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Visibility = Literal["public", "collective", "contributors", "private"]
MAX_FILES = 100_000  # as tessera.data.datasets.MAX_FILES
MAX_INPUTS = 64


class DatasetFile(Message):
    path: str = Field(min_length=1, max_length=512, description="POSIX, relative to the dataset's folder")
    sha256: Sha256
    size: Whole = Field(ge=0, le=MAX_COUNT)


class Derivation(Message):
    """How a dataset version was made from others: its inputs (pinned by id) and the transform
    (tessera.data.transforms) with its parameters and code version."""

    inputs: list[Sha256] = Field(min_length=1, max_length=MAX_INPUTS)
    transform: str = Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")
    params: dict[str, Any] = Field(default_factory=dict)
    code_version: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@/-]+$")
    deterministic: bool = True


class DatasetRequest(Message):
    """A new dataset version. Public, collective and contributors data lists its files (their
    bytes are uploaded next); private data gives only its id and statistics, and never leaves its
    owner's nodes."""

    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    licence: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.+-]+$", description="an SPDX id")
    description: Printable = Field(default="", max_length=4000)
    visibility: Visibility = "private"
    collective: str | None = Field(default=None, max_length=200, pattern=NAME_PATTERN)
    threshold_pflop: float | None = Field(default=None, ge=0.0, le=1e12, allow_inf_nan=False)
    threshold_run: str | None = HEX_ID
    files: list[DatasetFile] = Field(default_factory=list, max_length=MAX_FILES)
    root: Sha256 | None = Field(default=None, description="the Merkle root; required for private data")
    file_count: Whole = Field(default=0, ge=0, le=MAX_FILES)
    nbytes: Whole = Field(default=0, ge=0, le=MAX_COUNT)
    derivation: Derivation | None = None


class DatasetInfo(Message):
    dataset_id: str
    name: str
    number: int
    owner: str
    parent_id: str | None
    licence: str
    description: str
    visibility: str
    collective: str | None
    threshold_pflop: float | None
    threshold_run: str | None
    stored: bool = Field(description="its files are at the hub (false: private, kept by its owner)")
    state: str = Field(description="uploading (files missing) | ready")
    file_count: int
    nbytes: int
    missing: list[str] = Field(description="sha256 of the files still to upload")
    derivation: Derivation | None
    withdrawn_at: float | None
    withdrawn_reason: str | None
    tainted_by: list[str] = Field(description="withdrawn versions it derives from")
    created_at: float


class WithdrawRequest(Message):
    reason: Printable = Field(min_length=1, max_length=2000)


class WithdrawReply(Message):
    dataset_id: str
    withdrawn_at: float
    descendants_marked: int
    runs_told: list[str]


class AccessExplanation(Message):
    dataset_id: str
    provider: str
    granted: bool
    reason: str
    credit_pflop: float | None = Field(description="credited compute that counts toward the threshold")
    threshold_pflop: float | None


class AccessChange(Message):
    reason: Printable = Field(default="", max_length=2000)


class DatasetUse(Message):
    """A dataset version in a run's lineage: one the run trains on (``weight``) or one those
    were derived from. Its name and owner are shown only to those who may read it."""

    dataset_id: str
    name: str | None
    owner: str | None
    licence: str
    visibility: str
    weight: float | None = Field(description="its mixing weight in the run (None: an ancestor)")
    tokens: int = Field(description="tokens trained on it into the versions up to this one")
    derived_from: list[str]
    transform: str | None
    withdrawn: bool
    tainted_by: list[str]


class ComputeShare(Message):
    provider: str
    dataset_id: str | None = Field(
        description="what the compute trained on (None: the recipe's data path, not a dataset version)"
    )
    tokens: int
    pflop: float


class RunLineage(Message):
    """What produced a run's version: the datasets and tokens taken from each, whose compute,
    and, for a forked run, the lineage of the version it started from."""

    run_id: str
    name: str
    version: int
    version_id: str
    forked_from: RunLineage | None
    datasets: list[DatasetUse]
    compute: list[ComputeShare]
    marks: list[str] = Field(description="withdrawn data this version was trained on")


class RunEventInfo(Message):
    kind: str
    detail: str
    subject: str | None
    at: float
