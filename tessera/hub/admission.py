"""Admission per provider of what is counted in this hub process's memory: lease requests waiting
at once, and bandwidth-probe bytes per hour (probes stream, so their memory does not grow with
their size). Over a limit the request gets 429 with a ``Retry-After``; hub admins are not
counted. With several hub processes each process counts its own.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tessera.errors import TooManyRequests
from tessera.hub.auth import Principal
from tessera.hub.config import HubLimits

HOUR_S = 3600.0


class Admission:
    def __init__(self, limits: HubLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._waiting: dict[str, int] = defaultdict(int)
        self._probe_bytes: dict[str, deque[tuple[float, int]]] = defaultdict(deque)

    @contextmanager
    def waiting_lease(self, who: Principal) -> Iterator[None]:
        """Hold one of the provider's ``max_waiting_leases`` places while a lease request waits."""
        key, cap = who.provider_id, self.limits.max_waiting_leases
        with self._lock:
            if not who.is_admin and self._waiting[key] >= cap:
                raise TooManyRequests(
                    f"{who.name} has {cap} lease requests waiting at once, the most this hub allows a "
                    "provider (limits.max_waiting_leases); retry when one has ended",
                    retry_after_s=1.0,
                )
            self._waiting[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting[key] -= 1
                if not self._waiting[key]:
                    del self._waiting[key]

    def spend_probe(self, who: Principal, nbytes: int) -> None:
        """Admit a probe transfer of ``nbytes`` within the provider's hourly byte budget."""
        if who.is_admin:
            return
        now, budget = self.clock(), self.limits.max_probe_bytes_per_hour
        with self._lock:
            spent = self._probe_bytes[who.provider_id]
            while spent and spent[0][0] <= now - HOUR_S:
                spent.popleft()
            used = sum(n for _, n in spent)
            if used + nbytes > budget:
                wait = spent[0][0] + HOUR_S - now if spent else HOUR_S
                raise TooManyRequests(
                    f"{who.name} moved {used} probe bytes in the last hour; this hub allows "
                    f"{budget} (limits.max_probe_bytes_per_hour); probe with fewer bytes or later",
                    retry_after_s=max(1.0, wait),
                )
            spent.append((now, nbytes))
