"""Admission per provider of what is counted in this hub process's memory: lease requests waiting
at once, runs being created at once (one: building a run's model and data is the costliest
request), and bandwidth-probe bytes per hour (probes stream, so their memory does not grow with
their size). Over a limit the request gets 429 with a ``Retry-After``; hub admins are not
counted. With several hub processes each process counts its own.
"""

from __future__ import annotations

import contextlib
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
        self._creating: dict[str, int] = defaultdict(int)
        self._probe_bytes: dict[str, deque[tuple[float, int]]] = defaultdict(deque)

    def waiting_lease(self, who: Principal) -> contextlib.AbstractContextManager[None]:
        """One of the provider's ``max_waiting_leases`` places, held while a lease request waits."""
        what = "lease requests waiting at once (limits.max_waiting_leases)"
        return self._place(who, self._waiting, self.limits.max_waiting_leases, what, 1.0)

    def creating_run(self, who: Principal) -> contextlib.AbstractContextManager[None]:
        """The provider's one place for a run being created."""
        return self._place(who, self._creating, 1, "run being created at once", 2.0)

    @contextmanager
    def _place(
        self, who: Principal, counts: dict[str, int], cap: int, what: str, retry_s: float
    ) -> Iterator[None]:
        key = who.provider_id
        with self._lock:
            if not who.is_admin and counts[key] >= cap:
                raise TooManyRequests(
                    f"{who.name} has {cap} {what}, the most this hub allows a provider; retry when one "
                    "has ended",
                    retry_after_s=retry_s,
                )
            counts[key] += 1
        try:
            yield
        finally:
            with self._lock:
                counts[key] -= 1
                if not counts[key]:
                    del counts[key]

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
