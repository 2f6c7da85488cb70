"""A signal that a round closed: wakes lease requests waiting for one, in threads and event loops.

Waiting over HTTP holds no thread: the route awaits ``wait_async`` on the event loop. In-process
callers (benchmarks, simulations) block in ``wait``. ``generation`` counts notifications, so a
waiter that read it before checking for work does not sleep through a close that came between.
Closes in other hub processes (one PostgreSQL database) are not signalled: waiters re-check at
least every ``poll_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class RoundSignal:
    def __init__(self, poll_s: float = 0.5) -> None:
        self.poll_s = poll_s
        self.generation = 0
        self._lock = threading.Condition()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def notify(self) -> None:
        """A round closed: wake every waiter (callable from any thread)."""
        with self._lock:
            self.generation += 1
            self._lock.notify_all()
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # its event loop has closed: nobody waits there
                loop.call_soon_threadsafe(event.set)

    def wait(self, since: int, timeout: float) -> None:
        """Block until a notification after generation ``since``, or ``min(timeout, poll_s)``."""
        with self._lock:
            if self.generation == since:
                self._lock.wait(min(timeout, self.poll_s))

    async def wait_async(self, since: int, timeout: float) -> None:
        """As ``wait``, on the running event loop, holding no thread."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            if self.generation != since:
                return
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(event.wait(), min(timeout, self.poll_s))
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(entry)
