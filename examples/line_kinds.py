"""Bring your own model and data: classify lines of Python source by kind.

A model other than the reference LM, trained through the same hub and workers. Point a
recipe at the two factories below (see ``examples/line_kinds.toml``):

    [model]  factory = "examples.line_kinds:build_model"
    [data]   source  = "examples.line_kinds:load"

Each line of a ``.py`` file becomes a 256-bin byte histogram (the input) and one of four
kinds (the target): comment, import, definition (def/class), other code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tessera.data.corpus import is_held_out, pack_domains
from tessera.data.text import domain_of, list_text_files, stdlib_root

KINDS = ("comment", "import", "definition", "other")
Batch = tuple[torch.Tensor, torch.Tensor]


def build_model(hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(256, hidden), nn.ReLU(), nn.Linear(hidden, len(KINDS)))


def line_kind(line: str) -> int:
    s = line.strip()
    if s.startswith("#"):
        return 0
    if s.startswith(("import ", "from ")):
        return 1
    if s.startswith(("def ", "class ", "async def ")):
        return 2
    return 3


def featurize(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros((len(lines), 256), dtype=np.float32)
    for i, line in enumerate(lines):
        counts = np.bincount(np.frombuffer(line.encode(), dtype=np.uint8), minlength=256)
        x[i] = counts / max(counts.sum(), 1)
    y = np.array([line_kind(line) for line in lines], dtype=np.int64)
    return x, y


class LineKinds:
    """Lines of the .py files under ``root``; shards by top-level package, as the LM corpus."""

    def __init__(self, root: Path, num_shards: int, max_files: int) -> None:
        files = [f for f in list_text_files(root) if f.suffix == ".py"][:max_files]
        by_domain: dict[str, list[str]] = {}
        held: list[str] = []
        for f in files:
            content = f.read_bytes()
            lines = [ln for ln in content.decode(errors="replace").splitlines() if ln.strip()]
            domain = domain_of(f.relative_to(root))
            (held if is_held_out(content, 0.1) else by_domain.setdefault(domain, [])).extend(lines)
        packed = pack_domains({d: len(v) for d, v in by_domain.items()}, num_shards)
        self.shards = {
            f"shard-{i}": featurize([ln for d in ds for ln in by_domain[d]]) for i, ds in enumerate(packed)
        }
        self.held_out = featurize(held)

    def shard_names(self) -> list[str]:
        return list(self.shards)

    def train_batches(self, shard: str | None, batch_size: int, seed: int) -> Iterator[Batch]:
        parts = list(self.shards.values()) if shard is None else [self.shards[shard]]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        rng = np.random.default_rng(seed)
        while True:
            idx = rng.integers(0, len(y), batch_size)
            yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])

    def validation_batches(self, batch_size: int, count: int) -> list[Batch]:
        x, y = self.held_out
        n = min(len(y), batch_size * count)
        return [
            (torch.from_numpy(x[i : i + batch_size]), torch.from_numpy(y[i : i + batch_size]))
            for i in range(0, n, batch_size)
        ]


def load(path: str | None = None, num_shards: int = 2, max_files: int = 400) -> LineKinds:
    return LineKinds(Path(path) if path else stdlib_root(), num_shards, max_files)
