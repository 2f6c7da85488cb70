"""What every part of the hub service shares: the database and blob store, the clock, the
configuration, the runtime cache, the per-run locks and the signal of closed rounds.

Locks, from outermost to innermost (a holder never takes an outer one):

- ``RunLocks.of(run_id)``: serializes this process's changes to one run (leases issued,
  contributions recorded, a round marked closing or committed). Across hub processes sharing a
  database the run's row lock (``queries.run(..., lock=True)``) does the same; both are held
  only for the short transaction that changes the run, never while tensors are decoded,
  checked, aggregated or evaluated.
- ``RunRuntime.lock``: guards one runtime's model (evaluation and the quality probe).
- ``Runtimes``' own lock guards its two caches only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from tessera.blobs import BlobStore
from tessera.hub.config import HubConfig
from tessera.hub.providers import ProviderService
from tessera.hub.runtimes import Runtimes
from tessera.hub.signal import RoundSignal
from tessera.hub.state import State


class RunLocks:
    """One lock per run, made on first use; a run's lock is never replaced, so two threads that
    ask for it get the same one."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def of(self, run_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(run_id, threading.Lock())


@dataclass
class HubContext:
    state: State
    store: BlobStore
    clock: Callable[[], float]
    config: HubConfig
    providers: ProviderService
    runtimes: Runtimes
    locks: RunLocks
    rounds_closed: RoundSignal
