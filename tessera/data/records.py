"""Records as corpora: JSON Lines, Parquet and Hugging Face ``datasets`` saved to disk, read by
``tessera.data.records:load``.

``path`` is a ``.jsonl`` or ``.parquet`` file, a folder of them, or a folder written by
``datasets``' ``save_to_disk`` (all its splits are read: the held-out split is tessera's own,
by content). Each record's ``text_field`` is one document; records without it, or whose value
is not text, are skipped and counted. A record's ``domain_field`` (when given) is its domain;
otherwise each file is one. Reading runs no code from the data: JSON, Parquet and Arrow are
parsed, never unpickled.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.data.corpus import Corpus, CorpusSettings, Document
from tessera.data.tokens import tokens_for
from tessera.errors import ConfigError, DataError

FORMATS = ("auto", "jsonl", "parquet", "hf")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
HF_MARKERS = ("state.json", "dataset_dict.json")  # what save_to_disk writes


@dataclass
class RecordReader:
    """Turns records into documents, counting what it skipped and why."""

    text_field: str
    domain_field: str | None
    docs: list[Document] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    fields_seen: set[str] = field(default_factory=set)

    def add(self, records: Iterable[dict[str, Any]], source: str, domain: str) -> None:
        for n, record in enumerate(records):
            self.fields_seen.update(record)
            text = record.get(self.text_field)
            if not isinstance(text, str) or not text:
                self.skipped[f"without text in {self.text_field!r}"] += 1
                continue
            mine = record.get(self.domain_field) if self.domain_field else domain
            self.docs.append(Document(str(mine), f"{source}#{n}", text.encode()))

    def report(self, where: str) -> str:
        text = f"read {len(self.docs)} records from {where}"
        if self.skipped:
            text += "; skipped " + "; ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return text


def jsonl_records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(
                    f"{path}:{line_number} is not a JSON object ({exc}); fix or remove it"
                ) from exc
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_number} is {type(record).__name__}, not a JSON object")
            yield record


def parquet_records(path: Path, columns: list[str]) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("Parquet data needs the pyarrow package: pip install pyarrow") from exc
    try:
        names = pq.read_schema(path).names
        return pq.read_table(path, columns=[c for c in columns if c in names]).to_pylist()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowIOError and ArrowInvalid
        raise DataError(f"cannot read Parquet file {path}: {exc}") from exc


def hf_records(path: Path, columns: list[str]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(split name, records) of a data set saved with ``save_to_disk``."""
    try:
        from datasets import Dataset, load_from_disk
    except ImportError as exc:
        raise ConfigError(
            "a saved Hugging Face data set needs the datasets package: pip install datasets"
        ) from exc
    saved = load_from_disk(str(path))
    splits = {"data": saved} if isinstance(saved, Dataset) else dict(saved)
    for name, split in splits.items():
        kept = [c for c in columns if c in split.column_names]
        yield name, split.select_columns(kept).to_list()


def format_of(path: Path, given: str) -> str:
    if given != "auto":
        return given
    if path.is_dir():
        return "hf" if any((path / m).is_file() for m in HF_MARKERS) else "folder"
    if path.suffix in SUFFIXES:
        return SUFFIXES[path.suffix]
    raise DataError(
        f"cannot tell the format of {path}: name a .jsonl or .parquet file, a folder of them, or a "
        'folder written by datasets save_to_disk (or set the data option format = "jsonl" | "parquet" | "hf")'
    )


def read_file(reader: RecordReader, path: Path, fmt: str, columns: list[str]) -> None:
    records = jsonl_records(path) if fmt == "jsonl" else parquet_records(path, columns)
    reader.add(records, path.name, path.stem)


def read_records(reader: RecordReader, path: Path, fmt: str) -> None:
    columns = [reader.text_field, *([reader.domain_field] if reader.domain_field else [])]
    if fmt == "hf":
        for split, records in hf_records(path, columns):
            reader.add(records, split, split)
    elif fmt == "folder":
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"no .jsonl or .parquet files in {path}")
        for file in files:
            read_file(reader, file, SUFFIXES[file.suffix], columns)
    else:
        read_file(reader, path, fmt, columns)


def load(
    path: str | None = None,
    text_field: str = "text",
    domain_field: str | None = None,
    format: str = "auto",
    context: int = 128,
    num_shards: int = 4,
    held_out_fraction: float = 0.05,
    tokenizer: str | None = None,
) -> Corpus:
    """Data factory named in recipes as ``tessera.data.records:load``."""
    settings = CorpusSettings(context, num_shards, held_out_fraction)
    if format not in FORMATS:
        raise ConfigError(f"data option format must be one of {list(FORMATS)}, got {format!r}")
    if path is None:
        raise ConfigError("tessera.data.records:load needs a path: set [data] path, or pass --data")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data {root} does not exist; pass a .jsonl or .parquet file or a folder")
    reader = RecordReader(text_field, domain_field)
    read_records(reader, root, format_of(root, format))
    report = reader.report(str(root))
    if not reader.docs:
        seen = sorted(reader.fields_seen)[:20]
        raise DataError(
            f"{report}: no record has text in {text_field!r} (fields seen: {seen}); set text_field"
        )
    return Corpus.build(reader.docs, settings, str(root), tokens_for(tokenizer, root), report)
