"""The interface every data source implements, so a recipe can name its own.

A recipe's ``[data] source = "package.module:function"`` names a factory called as
``function(path, **options)``; ``path`` is the recipe's ``data.path`` on the hub, or the
folder a worker passes with ``--data``. It returns a ``DataSource``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


class DataSource(Protocol):
    def shard_names(self) -> list[str]:
        """Names of the training shards (e.g. one per domain group); at least one."""
        ...

    def train_batches(self, shard: str | None, batch_size: int, seed: int) -> Iterator[Batch]:
        """Endless (inputs, targets) batches from one shard, or from all data when None."""
        ...

    def validation_batches(self, batch_size: int, count: int) -> list[Batch]:
        """A fixed list of held-out batches (the same on every call)."""
        ...


@runtime_checkable
class ShardedValidation(Protocol):
    """A source that also holds out data per shard (modules are evaluated on their shards')."""

    def shard_validation_batches(self, shard: str, batch_size: int, count: int) -> list[Batch]: ...
