"""A corpus of documents: the held-out split by content, domains packed into shards, and batches
of token windows.

Every data source that reads text (a folder of files, JSON Lines, Parquet, a saved Hugging Face
data set) turns it into ``Document``s and builds a ``Corpus``. A document is held out when the
sha256 of its bytes says so, so any view of the same documents agrees without talking: a worker
whose data is a subfolder of the hub's never trains on a file the hub holds out. Domains are
packed into shards of similar size; when there are fewer domains than shards, documents are
packed instead, and fewer documents than shards is an error rather than fewer shards.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tessera.data.source import Batch
from tessera.data.tokens import ByteTokens, Tokens
from tessera.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MAX_CONTEXT = 1 << 16
MAX_SHARDS = 4096
MAX_BATCH_TOKENS = 1 << 24  # tokens of one batch (int64 inputs and targets: 256 MiB)
MAX_HELD_OUT_TOKENS = 1 << 24
SEPARATOR = b"\n"  # after every document


@dataclass(frozen=True)
class Document:
    """One text: its domain (a top-level folder, a file, a record's field), where it came from
    (for messages) and its bytes."""

    domain: str
    name: str
    content: bytes

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.content).digest()


def is_held_out(content: bytes, fraction: float) -> bool:
    """Whether a document with these bytes belongs to the held-out split (its sha256 decides)."""
    digest = hashlib.sha256(content).digest()
    return int.from_bytes(digest[:4], "big") < fraction * 2**32


@dataclass(frozen=True)
class CorpusSettings:
    """How a corpus is split and cut into windows; the options every text source shares."""

    context: int = 128
    num_shards: int = 4
    held_out_fraction: float = 0.05
    only: tuple[str, ...] = ()  # the domains to read, one shard each; empty: all, packed

    def __post_init__(self) -> None:
        if not 1 <= self.context <= MAX_CONTEXT:
            raise ConfigError(f"data context must be from 1 to {MAX_CONTEXT}, got {self.context}")
        if not 1 <= self.num_shards <= MAX_SHARDS:
            raise ConfigError(f"data num_shards must be from 1 to {MAX_SHARDS}, got {self.num_shards}")
        if not 0 < self.held_out_fraction < 0.5:
            raise ConfigError(f"data held_out_fraction must be in (0, 0.5), got {self.held_out_fraction}")


def held_out_set(docs: Sequence[Document], settings: CorpusSettings, min_tokens: int) -> set[int]:
    """Indices of the held-out documents: those whose hash falls under the fraction; with ``only``,
    every domain of several documents holds out at least one (its smallest hash). A corpus so small
    that nothing hashes in holds out its smallest-hash documents until ``min_tokens`` bytes (views
    of such tiny corpora may disagree; past about 20 documents the fraction decides alone)."""
    held = {i for i, d in enumerate(docs) if is_held_out(d.content, settings.held_out_fraction)}
    for domain in settings.only:
        mine = [i for i, d in enumerate(docs) if d.domain == domain]
        if len(mine) > 1 and not held & set(mine):
            held.add(min(mine, key=lambda i: docs[i].digest))
    if held or len(docs) < 2:
        return held
    size = 0
    for i in sorted(range(len(docs)), key=lambda i: docs[i].digest)[: len(docs) - 1]:
        held.add(i)
        size += len(docs[i].content)
        if size >= min_tokens:
            break
    return held


def pack_domains(sizes: dict[str, int], num_shards: int) -> list[list[str]]:
    """Greedy largest-first packing of units (domains or documents) into ``num_shards`` bins of
    similar size; bins left empty are dropped."""
    bins: list[list[str]] = [[] for _ in range(num_shards)]
    heap = [(0, i) for i in range(num_shards)]
    for unit in sorted(sizes, key=lambda d: (-sizes[d], d)):
        total, i = heapq.heappop(heap)
        bins[i].append(unit)
        heapq.heappush(heap, (total + sizes[unit], i))
    return [sorted(b) for b in bins if b]


@dataclass
class Corpus:
    """Documents as token arrays: per-unit training data (a unit is a domain, or a document when
    there are fewer domains than shards), shards of units, and the held-out split."""

    where: str  # what was read, for messages
    settings: CorpusSettings
    tokens: Tokens = field(default_factory=ByteTokens)
    domains: dict[str, np.ndarray] = field(default_factory=dict)  # unit -> training tokens
    unit_domain: dict[str, str] = field(default_factory=dict)
    held_out: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    held_out_domains: dict[str, np.ndarray] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)
    report: str = ""  # what the source read and skipped

    @property
    def context(self) -> int:
        return self.settings.context

    @classmethod
    def build(
        cls, docs: Sequence[Document], settings: CorpusSettings, where: str, tokens: Tokens, report: str = ""
    ) -> Corpus:
        corpus = cls(where=where, settings=settings, tokens=tokens, report=report)
        corpus._split(docs)
        log.info("%s", report or f"read {len(docs)} documents from {where}")
        return corpus

    @classmethod
    def of_split(
        cls,
        train: Sequence[Document],
        held: Sequence[Document],
        settings: CorpusSettings,
        where: str,
        tokens: Tokens,
    ) -> Corpus:
        """A corpus of documents split already (by the caller's rule), all training data in one
        shard, ``all``; either list may be empty."""
        corpus = cls(where=where, settings=settings, tokens=tokens)
        corpus._encode(list(train), list(held))
        corpus.shards = {"all": list(corpus.domains)}
        return corpus

    def _split(self, docs: Sequence[Document]) -> None:
        only = self.settings.only
        if only:
            docs = [d for d in docs if d.domain in only]
        held = held_out_set(docs, self.settings, 2 * (self.context + 1))
        train = [d for i, d in enumerate(docs) if i not in held]
        if not train:
            raise DataError(f"no documents to train on in {self.where}")
        missing = sorted(set(only) - {d.domain for d in train})
        if missing:
            have = sorted({d.domain for d in docs})[:20]
            raise DataError(f"domains {missing} not found in {self.where}; it has {have}")
        self._encode(train, [d for i, d in enumerate(docs) if i in held])
        self.shards = {d: [d] for d in only} if only else self._pack()

    def _encode(self, train: list[Document], held: list[Document]) -> None:
        by_domain = len({d.domain for d in train}) >= self.settings.num_shards or bool(self.settings.only)
        parts: dict[str, list[np.ndarray]] = {}
        for doc in train:
            unit = doc.domain if by_domain else f"{doc.domain}/{doc.name}"
            self.unit_domain[unit] = doc.domain
            parts.setdefault(unit, []).append(self.tokens.encode(doc.content + SEPARATOR))
        held_parts: dict[str, list[np.ndarray]] = {}
        ordered = []  # the held-out documents in the order read
        for doc in held:
            ordered.append(self.tokens.encode(doc.content + SEPARATOR))
            held_parts.setdefault(doc.domain, []).append(ordered[-1])
        self.domains = {u: np.concatenate(a) for u, a in parts.items()}
        self.held_out_domains = {d: np.concatenate(a) for d, a in held_parts.items()}
        self.held_out = np.concatenate(ordered) if ordered else np.zeros(0, dtype=self.tokens.dtype)

    def _pack(self) -> dict[str, list[str]]:
        asked = self.settings.num_shards
        if len(self.domains) < asked:
            raise DataError(
                f"{self.where} has {len(self.domains)} documents to train on, fewer than the {asked} "
                "shards asked; ask for fewer (data option num_shards) or add data"
            )
        packed = pack_domains({u: len(a) for u, a in self.domains.items()}, asked)
        return {f"shard-{i}": units for i, units in enumerate(packed)}

    def shard_names(self) -> list[str]:
        return list(self.shards)

    def shard_tokens(self, shard: str | None) -> np.ndarray:
        if shard is None:
            return np.concatenate(list(self.domains.values()))
        if shard not in self.shards:
            raise DataError(f"unknown shard {shard!r}; this corpus has {self.shard_names()}")
        return np.concatenate([self.domains[u] for u in self.shards[shard]])

    def check_batches(self, batch_size: int, count: int) -> None:
        """ConfigError before allocating batches of more than ``MAX_BATCH_TOKENS`` tokens each, or
        held-out sets of more than ``MAX_HELD_OUT_TOKENS``."""
        tokens = batch_size * (self.context + 1)
        if tokens > MAX_BATCH_TOKENS or tokens * count > MAX_HELD_OUT_TOKENS:
            raise ConfigError(
                f"batches of {batch_size} x context {self.context} ({count} of them) exceed what the text "
                f"loader builds ({MAX_BATCH_TOKENS} tokens a batch, {MAX_HELD_OUT_TOKENS} held out)"
            )

    def train_batches(self, shard: str | None, batch_size: int, seed: int) -> Iterator[Batch]:
        self.check_batches(batch_size, 1)
        data = self.shard_tokens(shard)
        if len(data) <= self.context + 1:
            raise DataError(f"shard {shard} of {self.where} is too small for context {self.context}")
        rng = np.random.default_rng(seed)
        while True:
            yield windows(data, rng.integers(0, len(data) - self.context - 1, batch_size), self.context)

    def validation_batches(self, batch_size: int, count: int) -> list[Batch]:
        return self._held_out_batches(self.held_out, batch_size, count, "")

    def shard_validation_batches(self, shard: str, batch_size: int, count: int) -> list[Batch]:
        """Held-out batches of one shard's domains (documents hashed into the held-out split)."""
        if shard not in self.shards:
            raise DataError(f"unknown shard {shard!r}; this corpus has {self.shard_names()}")
        domains = sorted({self.unit_domain[u] for u in self.shards[shard]})
        chunks = [self.held_out_domains[d] for d in domains if d in self.held_out_domains]
        data = np.concatenate(chunks) if chunks else np.zeros(0, dtype=self.tokens.dtype)
        return self._held_out_batches(data, batch_size, count, f" (shard {shard})")

    def _held_out_batches(self, data: np.ndarray, batch_size: int, count: int, what: str) -> list[Batch]:
        self.check_batches(batch_size, count)
        if len(data) <= self.context + 1:
            raise DataError(f"held-out split of {self.where}{what} is too small for context {self.context}")
        rng = np.random.default_rng(0)
        return [
            windows(data, rng.integers(0, len(data) - self.context - 1, batch_size), self.context)
            for _ in range(count)
        ]


def windows(data: np.ndarray, starts: np.ndarray, context: int) -> Batch:
    idx = starts[:, None] + np.arange(context + 1)[None, :]
    chunk = torch.from_numpy(data[idx].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]
