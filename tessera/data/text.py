"""Byte-level text corpora split into domain shards and a held-out validation split.

The default corpus is the Python standard library's own source, read from the running
interpreter (test folders and site-packages excluded), so nothing is downloaded. A domain is a
top-level package (``email``, ``asyncio``, ...); single-file modules form the domain
``modules``. Domains are packed into shards of similar size, or, with ``domains=[...]``, only
those domains are read and each is a shard of its own (held out per shard too). A file belongs
to the held-out split when a hash of its relative path says so, so every process agrees without
talking.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tessera.data.source import Batch
from tessera.errors import ConfigError, DataError

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".toml", ".json", ".cfg", ".ini", ".csv", ".html")
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
ROOT_DOMAIN = "modules"
MAX_CONTEXT = 1 << 16
MAX_SHARDS = 4096
MAX_BATCH_TOKENS = 1 << 24  # bytes of one batch (16 MiB; int64 inputs and targets: 256 MiB)
MAX_HELD_OUT_TOKENS = 1 << 24


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(relative: str, fraction: float) -> bool:
    digest = hashlib.sha256(relative.encode()).digest()
    return int.from_bytes(digest[:4], "big") < fraction * 2**32


def domain_of(relative: Path) -> str:
    return relative.parts[0] if len(relative.parts) > 1 else ROOT_DOMAIN


def list_text_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            files.append(path)
    return files


def held_out_names(files: list[Path], fraction: float, only: tuple[str, ...]) -> set[str]:
    """Files hashed into the held-out split; with ``only``, every domain of several files holds
    out at least one (the one of smallest hash), so each shard can be evaluated on its own."""
    names = {rel.as_posix() for rel in files if is_held_out(rel.as_posix(), fraction)}
    for domain in only:
        mine = [rel.as_posix() for rel in files if domain_of(rel) == domain]
        if len(mine) > 1 and not names & set(mine):
            names.add(min(mine, key=lambda n: hashlib.sha256(n.encode()).digest()))
    return names


def pack_domains(sizes: dict[str, int], num_shards: int) -> list[list[str]]:
    """Greedy largest-first packing of domains into ``num_shards`` bins of similar size."""
    bins: list[list[str]] = [[] for _ in range(num_shards)]
    totals = [0] * num_shards
    for domain in sorted(sizes, key=lambda d: (-sizes[d], d)):
        i = totals.index(min(totals))
        bins[i].append(domain)
        totals[i] += sizes[domain]
    return [sorted(b) for b in bins if b]


@dataclass
class TextCorpus:
    """A folder of text files as byte arrays: per-domain training data and a held-out split."""

    root: Path
    context: int
    held_out_fraction: float = 0.05
    num_shards: int = 4
    only: tuple[str, ...] = ()  # the domains to read, one shard each; empty: all, packed
    domains: dict[str, np.ndarray] = field(default_factory=dict)
    held_out: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    held_out_domains: dict[str, np.ndarray] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.context <= MAX_CONTEXT:
            raise ConfigError(f"data context must be from 1 to {MAX_CONTEXT}, got {self.context}")
        if not 1 <= self.num_shards <= MAX_SHARDS:
            raise ConfigError(f"data num_shards must be from 1 to {MAX_SHARDS}, got {self.num_shards}")
        if not 0 < self.held_out_fraction < 0.5:
            raise ConfigError(f"data held_out_fraction must be in (0, 0.5), got {self.held_out_fraction}")
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist; pass a folder of text files")
        self._load()

    def check_batches(self, batch_size: int, count: int) -> None:
        """ConfigError before allocating batches of more than ``MAX_BATCH_TOKENS`` bytes each, or
        held-out sets of more than ``MAX_HELD_OUT_TOKENS``."""
        tokens = batch_size * (self.context + 1)
        if tokens > MAX_BATCH_TOKENS or tokens * count > MAX_HELD_OUT_TOKENS:
            raise ConfigError(
                f"batches of {batch_size} x context {self.context} ({count} of them) exceed what the text "
                f"loader builds ({MAX_BATCH_TOKENS} bytes a batch, {MAX_HELD_OUT_TOKENS} held out)"
            )

    def _load(self) -> None:
        parts: dict[str, list[bytes]] = {}
        held: dict[str, list[bytes]] = {}
        files = [(p, p.relative_to(self.root)) for p in list_text_files(self.root)]
        if self.only:
            files = [(p, rel) for p, rel in files if domain_of(rel) in self.only]
        held_names = held_out_names([rel for _, rel in files], self.held_out_fraction, self.only)
        in_order: list[bytes] = []  # the held-out files in file order, as the split has always been
        for path, rel in files:
            data = path.read_bytes() + b"\n"
            split = held if rel.as_posix() in held_names else parts
            split.setdefault(domain_of(rel), []).append(data)
            if split is held:
                in_order.append(data)
        if not parts:
            raise DataError(
                f"no text files ({', '.join(TEXT_SUFFIXES)}) found under {self.root}; "
                "pass --data with a folder that holds some"
            )
        missing = sorted(set(self.only) - set(parts))
        if missing:
            raise DataError(f"domains {missing} not found under {self.root}; it has {sorted(parts)[:20]}")
        self.domains = {d: _as_array(chunks) for d, chunks in parts.items()}
        self.held_out_domains = {d: _as_array(chunks) for d, chunks in held.items()}
        self.held_out = _as_array(in_order) if in_order else self._fallback_held_out()
        if self.only:
            self.shards = {d: [d] for d in self.only}
        else:
            sizes = {d: len(a) for d, a in self.domains.items()}
            packed = pack_domains(sizes, self.num_shards)
            self.shards = {f"shard-{i}": domains for i, domains in enumerate(packed)}

    def _fallback_held_out(self) -> np.ndarray:
        """Tiny folders may hash no file into the held-out split: keep the tail of the largest."""
        name = max(self.domains, key=lambda d: len(self.domains[d]))
        data = self.domains[name]
        cut = max(len(data) - max(len(data) // 10, self.context + 1), 0)
        self.domains[name] = data[:cut]
        return data[cut:]

    def shard_names(self) -> list[str]:
        return list(self.shards)

    def shard_bytes(self, shard: str | None) -> np.ndarray:
        if shard is None:
            return np.concatenate(list(self.domains.values()))
        if shard not in self.shards:
            raise DataError(f"unknown shard {shard!r}; this corpus has {self.shard_names()}")
        return np.concatenate([self.domains[d] for d in self.shards[shard]])

    def train_batches(self, shard: str | None, batch_size: int, seed: int) -> Iterator[Batch]:
        self.check_batches(batch_size, 1)
        data = self.shard_bytes(shard)
        rng = np.random.default_rng(seed)
        while True:
            yield windows(data, rng.integers(0, len(data) - self.context - 1, batch_size), self.context)

    def validation_batches(self, batch_size: int, count: int) -> list[Batch]:
        return self._held_out_batches(self.held_out, batch_size, count, "")

    def shard_validation_batches(self, shard: str, batch_size: int, count: int) -> list[Batch]:
        """Held-out batches of one shard's domains (files hashed into the held-out split)."""
        if shard not in self.shards:
            raise DataError(f"unknown shard {shard!r}; this corpus has {self.shard_names()}")
        chunks = [self.held_out_domains[d] for d in self.shards[shard] if d in self.held_out_domains]
        data = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)
        return self._held_out_batches(data, batch_size, count, f" (shard {shard})")

    def _held_out_batches(self, data: np.ndarray, batch_size: int, count: int, what: str) -> list[Batch]:
        self.check_batches(batch_size, count)
        if len(data) <= self.context + 1:
            raise DataError(f"held-out split of {self.root}{what} is too small for context {self.context}")
        rng = np.random.default_rng(0)
        return [
            windows(data, rng.integers(0, len(data) - self.context - 1, batch_size), self.context)
            for _ in range(count)
        ]


def _as_array(chunks: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def windows(data: np.ndarray, starts: np.ndarray, context: int) -> Batch:
    idx = starts[:, None] + np.arange(context + 1)[None, :]
    chunk = torch.from_numpy(data[idx].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


def load(
    path: str | None = None,
    context: int = 128,
    num_shards: int = 4,
    domains: list[str] | None = None,
    held_out_fraction: float = 0.05,
) -> TextCorpus:
    """Data factory named in recipes as ``tessera.data.text:load``; no path: the stdlib."""
    root = Path(path).expanduser() if path else stdlib_root()
    only = tuple(domains or ())
    return TextCorpus(
        root=root, context=context, num_shards=num_shards, only=only, held_out_fraction=held_out_fraction
    )
