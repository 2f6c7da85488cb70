"""The built-in transforms that derive a dataset version from others: filter, dedupe, split and
annotate. Each is a pure function of its inputs' files (already checked against their ids) and
its parameters, so a deterministic transform re-run on the same inputs gives the same files, and
so the same id. Its code version is the sha256 of its own source: a changed transform is
recorded as a different one.

Inputs are ``(dataset id, {path: bytes})``. With one input a file keeps its path; with several,
each input's files go under a folder named by the first 12 digits of its id, so paths never
collide. ``annotate`` is a person's work: its output is the records they wrote (JSON Lines with a
``describes`` path and a ``text``), each checked to describe a file of the inputs and stamped
with that file's sha256.
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from tessera.errors import DataError

Files = dict[str, bytes]
Inputs = list[tuple[str, Files]]
MAX_ANNOTATION_BYTES = 64 << 20
MAX_PATTERN = 1000  # characters of a filter's regular expression


def merged(inputs: Inputs) -> Files:
    """One input's files as they are; several inputs' under a folder per input."""
    if len(inputs) == 1:
        return dict(inputs[0][1])
    return {f"{dataset_id[:12]}/{path}": data for dataset_id, files in inputs for path, data in files.items()}


@dataclass(frozen=True)
class FilterParams:
    include: list[str] = field(default_factory=list)  # fnmatch patterns on paths; empty: all
    exclude: list[str] = field(default_factory=list)
    contains: str | None = None  # a regular expression the text must match
    min_bytes: int = 0
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.contains is not None:
            if len(self.contains) > MAX_PATTERN:
                raise DataError(f"filter contains: at most {MAX_PATTERN} characters")
            try:
                re.compile(self.contains)
            except (re.error, RecursionError, OverflowError) as exc:
                raise DataError(
                    f"filter contains: {self.contains!r} is not a regular expression ({exc})"
                ) from exc
        if self.min_bytes < 0 or (self.max_bytes is not None and self.max_bytes < self.min_bytes):
            raise DataError("filter min_bytes must be >= 0 and max_bytes >= min_bytes")


def filter_files(inputs: Inputs, p: FilterParams) -> Files:
    """The files whose path matches ``include`` (and not ``exclude``), whose size is within
    bounds, and whose text matches ``contains``."""
    pattern = re.compile(p.contains) if p.contains is not None else None
    kept = {}
    for path, data in merged(inputs).items():
        if p.include and not any(fnmatch.fnmatch(path, g) for g in p.include):
            continue
        if any(fnmatch.fnmatch(path, g) for g in p.exclude):
            continue
        if len(data) < p.min_bytes or (p.max_bytes is not None and len(data) > p.max_bytes):
            continue
        if pattern is not None and not pattern.search(data.decode("utf-8", "replace")):
            continue
        kept[path] = data
    return kept


@dataclass(frozen=True)
class DedupeParams:
    pass


def dedupe_files(inputs: Inputs, _: DedupeParams) -> Files:
    """Each distinct content once, at the first of its paths in sorted order."""
    seen: set[bytes] = set()
    kept = {}
    for path, data in sorted(merged(inputs).items()):
        digest = hashlib.sha256(data).digest()
        if digest not in seen:
            seen.add(digest)
            kept[path] = data
    return kept


@dataclass(frozen=True)
class SplitParams:
    fraction: float = 0.1  # of the files in the part "held_out"
    part: str = "train"  # train | held_out
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise DataError(f"split fraction must be above 0 and below 1, got {self.fraction}")
        if self.part not in ("train", "held_out"):
            raise DataError(f"split part must be 'train' or 'held_out', got {self.part!r}")


def split_files(inputs: Inputs, p: SplitParams) -> Files:
    """One part of a split by content: a file is held out when sha256(seed, bytes) says so."""

    def held(data: bytes) -> bool:
        digest = hashlib.sha256(p.seed.to_bytes(8, "big") + data).digest()
        return int.from_bytes(digest[:4], "big") < p.fraction * 2**32

    return {path: data for path, data in merged(inputs).items() if held(data) == (p.part == "held_out")}


@dataclass(frozen=True)
class AnnotateParams:
    annotations: str = ""  # the person's JSON Lines, as text (the CLI reads it from a file)
    name: str = "annotations.jsonl"

    def __post_init__(self) -> None:
        if not self.annotations.strip():
            raise DataError('annotate needs the annotations: JSON Lines of {"describes": path, "text": ...}')
        if len(self.annotations.encode()) > MAX_ANNOTATION_BYTES:
            raise DataError(f"annotations larger than {MAX_ANNOTATION_BYTES} bytes; split them")


def annotate_files(inputs: Inputs, p: AnnotateParams) -> Files:
    """The person's records, each stamped with the sha256 of the input file it describes."""
    files = merged(inputs)
    out = []
    for n, line in enumerate(p.annotations.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"annotations line {n} is not JSON ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'annotations line {n} needs a "text" string and a "describes" path')
        described = record.get("describes")
        if not isinstance(described, str) or described not in files:
            raise DataError(
                f"annotations line {n} describes {described!r}, which is not a file of the inputs "
                f"(e.g. {sorted(files)[:3]})"
            )
        stamped = {**record, "describes_sha256": hashlib.sha256(files[described]).hexdigest()}
        out.append(json.dumps(stamped, sort_keys=True, ensure_ascii=False))
    if not out:
        raise DataError("the annotations hold no record")
    return {p.name: ("\n".join(out) + "\n").encode()}


@dataclass(frozen=True)
class Transform:
    name: str
    run: Callable[[Inputs, Any], Files]
    params: type
    deterministic: bool
    digested: tuple[str, ...] = ()  # parameters recorded by their sha256 (a person's own text)

    @property
    def code_version(self) -> str:
        source = inspect.getsource(self.run) + inspect.getsource(self.params)
        return (
            f"tessera.data.transforms:{self.run.__name__}@{hashlib.sha256(source.encode()).hexdigest()[:16]}"
        )

    def parse(self, params: dict[str, Any]) -> Any:
        """The parameters as this transform's dataclass; DataError naming an unknown or mistyped one."""
        known = {f.name: f for f in fields(self.params)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise DataError(f"transform {self.name} has no parameters {unknown}; it takes {sorted(known)}")
        for key, value in params.items():
            if not type_ok(value, str(known[key].type)):
                raise DataError(
                    f"transform {self.name} parameter {key} must be {known[key].type}, got {value!r}"
                )
        return self.params(**params)

    def recorded(self, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters as the hub records them: a digested one by its sha256."""
        return {
            k: f"sha256:{hashlib.sha256(str(v).encode()).hexdigest()}" if k in self.digested else v
            for k, v in params.items()
        }

    def apply(self, inputs: Inputs, params: dict[str, Any]) -> Files:
        files = self.run(inputs, self.parse(params))
        if not files:
            raise DataError(f"transform {self.name} with {params} leaves no file; loosen its parameters")
        return files


def type_ok(value: Any, declared: str) -> bool:
    """Whether a JSON value has a parameter's declared type (``int``, ``float``, ``str``,
    ``list[str]``, or one of them ``| None``); a bool is no number."""
    kinds = {part.strip() for part in declared.split("|")}
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):
        return False
    if isinstance(value, list):
        return "list[str]" in kinds and all(isinstance(v, str) for v in value)
    if isinstance(value, float):
        return "float" in kinds
    if isinstance(value, int):
        return bool(kinds & {"int", "float"})
    return isinstance(value, str) and "str" in kinds


TRANSFORMS = {
    t.name: t
    for t in (
        Transform("filter", filter_files, FilterParams, True),
        Transform("dedupe", dedupe_files, DedupeParams, True),
        Transform("split", split_files, SplitParams, True),
        Transform("annotate", annotate_files, AnnotateParams, False, ("annotations",)),
    )
}


def transform(name: str) -> Transform:
    if name not in TRANSFORMS:
        raise DataError(f"unknown transform {name!r}; the built-in ones are {sorted(TRANSFORMS)}")
    return TRANSFORMS[name]
