"""A run's dataset versions as its data source: each version cut into shards by its manifest
alone, so the hub and every worker agree on a shard's files without reading them, and a worker
fetches only the files of the shard it trains on.

A version's units are its top-level folders (its files, when it has fewer folders than
``num_shards``), packed by size into at most ``num_shards`` shards named ``<id[:12]>-<k>``. A
private version, whose files the hub never sees, is one shard, ``<id[:12]>-private``, that
trains on its owner's own copy. A file's documents: a ``.jsonl`` file's records' ``text_field``,
else the file itself if it is text. Whole files are held out, by their sha256 in the manifest
(``held_out_files``), so the hub and every worker agree without reading them; the held-out
batches are those of every version whose files are readable here.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from tessera.data.corpus import Corpus, CorpusSettings, Document, pack_domains
from tessera.data.datasets import FileEntry
from tessera.data.source import Batch
from tessera.data.text import SNIFF_BYTES, is_text
from tessera.data.tokens import ByteTokens
from tessera.errors import ConfigError, DataError

PRIVATE = "private"
CACHED_SHARDS = 8


class DatasetFiles(Protocol):
    """Where a machine reads dataset versions' files: the hub's blob store, or a worker's cache
    filled from the hub (and its owner's own copy of a private version)."""

    def manifest(self, dataset_id: str) -> list[FileEntry] | None:
        """The version's files, or None when they cannot be read here (another's private data)."""
        ...

    def contents(self, dataset_id: str, files: list[FileEntry]) -> dict[str, bytes]:
        """These files of the version, path -> bytes, each checked against its sha256."""
        ...

    def private(self, dataset_id: str) -> bool:
        """Whether the version is private: one shard, trained on its owner's own copy."""
        ...


@dataclass(frozen=True)
class DatasetShard:
    name: str
    dataset_id: str
    files: tuple[FileEntry, ...]  # a private version's: its owner's copy (none elsewhere)


def shard_prefix(dataset_id: str) -> str:
    return dataset_id[:12]


def private_shard(dataset_id: str) -> str:
    return f"{shard_prefix(dataset_id)}-{PRIVATE}"


def dataset_shards(dataset_id: str, files: list[FileEntry], num_shards: int) -> list[DatasetShard]:
    """A version's shards, from its manifest alone."""
    by_folder: dict[str, list[FileEntry]] = {}
    for f in files:
        by_folder.setdefault(domain_of_path(f.path), []).append(f)
    units = by_folder if len(by_folder) >= num_shards else {f.path: [f] for f in files}
    sizes = {unit: sum(f.size for f in members) for unit, members in units.items()}
    packed = pack_domains(sizes, min(num_shards, len(units)))
    return [
        DatasetShard(f"{shard_prefix(dataset_id)}-{k}", dataset_id, tuple(f for u in group for f in units[u]))
        for k, group in enumerate(packed)
    ]


def held_out_files(files: list[FileEntry], fraction: float) -> set[str]:
    """The sha256 of a version's held-out files: those whose sha256 falls under the fraction, or,
    if none does, the one with the smallest (a version of one file holds none out). Read from
    the manifest alone, so every machine holds out the same files, and workers never fetch them."""
    held = {f.sha256 for f in files if int(f.sha256[:8], 16) < fraction * 2**32}
    if not held and len(files) > 1:
        held = {min(f.sha256 for f in files)}
    return held


def domain_of_path(path: str) -> str:
    parts = path.split("/")
    return parts[0] if len(parts) > 1 else "."


def documents(dataset_id: str, contents: dict[str, bytes], text_field: str) -> list[Document]:
    """A version's files as documents (domain: the version's prefix and the file's top folder)."""
    docs = []
    for path, data in sorted(contents.items()):
        domain = f"{shard_prefix(dataset_id)}/{domain_of_path(path)}"
        if path.endswith((".jsonl", ".ndjson")):
            docs += records(domain, path, data, text_field)
        elif is_text(data[:SNIFF_BYTES]):
            docs.append(Document(domain, path, data))
    return docs


def records(domain: str, path: str, data: bytes, text_field: str) -> list[Document]:
    docs = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}:{n} is not a JSON object ({exc})") from exc
        text = record.get(text_field) if isinstance(record, dict) else None
        if isinstance(text, str) and text:
            docs.append(Document(domain, f"{path}#{n}", text.encode()))
    return docs


@dataclass(frozen=True)
class MixtureSettings:
    """What ``[data] options`` may say of a dataset run."""

    context: int = 128
    num_shards: int = 4  # per dataset version
    held_out_fraction: float = 0.05
    text_field: str = "text"

    def corpus(self) -> CorpusSettings:
        return CorpusSettings(self.context, self.num_shards, self.held_out_fraction)


class DatasetMixture:
    """The data source of a run that names dataset versions (a ``DataSource``)."""

    def __init__(self, dataset_ids: list[str], files: DatasetFiles, settings: MixtureSettings) -> None:
        self.files, self.settings = files, settings
        self.corpus_settings = settings.corpus()
        self.shards: dict[str, DatasetShard] = {}
        self.held: dict[str, list[FileEntry]] = {}  # the held-out files of versions readable here
        self.unreadable: list[str] = []  # not readable here (yet): shards learned if a lease names one
        for dataset_id in dataset_ids:
            manifest = files.manifest(dataset_id)
            if manifest is None and not files.private(dataset_id):
                self.unreadable.append(dataset_id)
            else:
                self._add(dataset_id, manifest)
        self._corpora: OrderedDict[str, Corpus] = OrderedDict()

    def _add(self, dataset_id: str, manifest: list[FileEntry] | None) -> None:
        """A version's shards (a private one: one shard, of the owner's copy where it is here)
        and its held-out files."""
        if manifest is not None:
            held = held_out_files(manifest, self.settings.held_out_fraction)
            self.held[dataset_id] = [f for f in manifest if f.sha256 in held]
            manifest = [f for f in manifest if f.sha256 not in held]
        if self.files.private(dataset_id):
            name = private_shard(dataset_id)
            self.shards[name] = DatasetShard(name, dataset_id, tuple(manifest or ()))
        elif not manifest:
            raise DataError(
                f"dataset version {dataset_id[:16]} holds out all its files (held_out_fraction "
                f"{self.settings.held_out_fraction}), leaving nothing to train on: add files or lower it"
            )
        else:
            self.shards |= {s.name: s for s in dataset_shards(dataset_id, manifest, self.settings.num_shards)}

    def shard_names(self) -> list[str]:
        return list(self.shards)

    def _documents(self, dataset_id: str, files: list[FileEntry]) -> list[Document]:
        return documents(dataset_id, self.files.contents(dataset_id, files), self.settings.text_field)

    def corpus(self, shard: str) -> Corpus:
        """The shard's training documents as a corpus, built once (the last few kept)."""
        if shard in self._corpora:
            self._corpora.move_to_end(shard)
            return self._corpora[shard]
        if shard not in self.shards:
            self._learn(shard)
        chosen = self.shards[shard]
        if not chosen.files:
            raise DataError(
                f"shard {shard} is private data of dataset {chosen.dataset_id[:16]}: it trains only on its "
                "owner's nodes, from their own copy (tessera worker --data FOLDER)"
            )
        train = self._documents(chosen.dataset_id, list(chosen.files))
        corpus = Corpus.of_split(train, [], self.corpus_settings, f"shard {shard}", ByteTokens())
        if not corpus.domains:
            raise DataError(f"shard {shard} holds no text to train on (all of it binary)")
        self._corpora[shard] = corpus
        while len(self._corpora) > CACHED_SHARDS:
            self._corpora.popitem(last=False)
        return corpus

    def _learn(self, shard: str) -> None:
        """The shards of a version not readable here before (its provider has earned access
        since), read now; DataError if ``shard`` is none of them."""
        for dataset_id in [i for i in self.unreadable if shard.startswith(f"{shard_prefix(i)}-")]:
            manifest = self.files.manifest(dataset_id)
            if manifest is not None:
                self._add(dataset_id, manifest)
                self.unreadable.remove(dataset_id)
        if shard not in self.shards:
            raise DataError(f"unknown shard {shard!r}; this run's datasets have {self.shard_names()[:8]}")

    def train_batches(self, shard: str | None, batch_size: int, seed: int) -> Iterator[Batch]:
        if shard is None:
            raise ConfigError("a run on datasets trains shard by shard; a lease names the shard")
        return self.corpus(shard).train_batches(None, batch_size, seed)

    def shard_validation_batches(self, shard: str, batch_size: int, count: int) -> list[Batch]:
        """Held-out batches of the shard's dataset version (a module trained on it is evaluated on
        them); none for a version whose files are not readable here."""
        if shard not in self.shards:
            raise DataError(f"unknown shard {shard!r}; this run's datasets have {self.shard_names()[:8]}")
        dataset_id = self.shards[shard].dataset_id
        held = self._documents(dataset_id, self.held.get(dataset_id, []))
        if not held:
            return []
        corpus = Corpus.of_split(
            [], held, self.corpus_settings, f"held-out files of {dataset_id[:16]}", ByteTokens()
        )
        return corpus.validation_batches(batch_size, count)

    def validation_batches(self, batch_size: int, count: int) -> list[Batch]:
        """Held-out batches of every version whose files are readable here."""
        held = [d for dataset_id, files in self.held.items() for d in self._documents(dataset_id, files)]
        if not held:
            raise DataError(
                "none of the run's datasets readable here holds out a document (needed to evaluate "
                "versions): add more documents, or a dataset the hub holds"
            )
        corpus = Corpus.of_split([], held, self.corpus_settings, "held-out documents", ByteTokens())
        return corpus.validation_batches(batch_size, count)
