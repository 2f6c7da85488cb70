"""The worker's loop: lease, download the blobs it lacks, train H inner steps, upload.

Only outbound HTTP. One loop knows both modes of a run: rounds in turn (each lease trained and
uploaded before the next is asked for), or, with ``[communication] overlap``, communication
overlapped with training (``tessera.worker.overlap``). What the worker holds between rounds is
its session (``tessera.worker.session``), which also decides whether it may join the run and
tells its reporter what the worker is doing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tessera.api.client import HubAPI
from tessera.api.messages import ContributionReply, LeaseGrant
from tessera.core.inner import InnerResult
from tessera.worker.overlap import Overlapped
from tessera.worker.session import Reporter, WorkerSettings, WorkerSummary, WorkSession


class WorkLoop:
    """Works on one run until it finishes (or is stopped), in the mode its recipe asks for.

    ``session`` is built when the loop is made, so a run whose code this machine does not
    trust, or cannot build, is refused before the loop starts (and before the worker registers);
    ``overlapped`` is the overlapped mode's state once it runs (its shifts: how late each outer
    update arrived). ``reporter`` hears what the worker does (default: it is logged)."""

    def __init__(self, client: HubAPI, settings: WorkerSettings, reporter: Reporter | None = None) -> None:
        self.session = WorkSession(client, settings, reporter)
        self.overlapped: Overlapped | None = None

    def run(
        self,
        stop: threading.Event | None = None,
        on_contribution: Callable[[ContributionReply], None] | None = None,
        leave: Callable[[], bool] | None = None,
    ) -> WorkerSummary:
        """Work until the run finishes (or ``stop`` is set, or ``leave``, asked after each
        contribution, says to go: a pool worker that the hub moves to another run)."""
        start, summary = time.perf_counter(), WorkerSummary(started_at=time.time())
        if self.session.recipe.communication.overlap:
            self.overlapped = Overlapped(self.session)
            self.overlapped.run(summary, stop, on_contribution)
        else:
            self.rounds(summary, stop, on_contribution, leave)
        client = self.session.client
        summary.wall_s = time.perf_counter() - start
        summary.bytes_up, summary.bytes_down = client.bytes_up, client.bytes_down
        return summary

    def rounds(
        self,
        summary: WorkerSummary,
        stop: threading.Event | None,
        on_contribution: Callable[[ContributionReply], None] | None,
        leave: Callable[[], bool] | None = None,
    ) -> None:
        """Lease, fetch, train H steps, upload; then the same for the next round."""
        session = self.session
        while stop is None or not stop.is_set():
            lease = session.client.lease(session.identity.worker_id, wait_s=session.settings.wait_s)
            if lease.status == "done":
                break
            if lease.lease is None:  # wait: the round has our contribution already, or a window is closed
                if leave is not None and lease.retry_after_s > session.settings.wait_s and leave():
                    break
                continue
            reply, result = self.work(lease.lease)
            summary.contributions.append(reply)
            summary.compute_s += result.compute_s
            if on_contribution is not None:
                on_contribution(reply)
            if leave is not None and leave():
                break

    def work(self, lease: LeaseGrant) -> tuple[ContributionReply, InnerResult]:
        """Train on one lease and upload the pseudo-gradient."""
        session = self.session
        session.load(session.tensors_of(lease), lease)
        base = session.trained()
        result = self.train(lease)
        reply = session.client.submit(*session.contribution(lease, base, result))
        session.reporter.contribution(reply, result)
        return reply, result

    def train(self, lease: LeaseGrant) -> InnerResult:
        """The lease's H inner steps on this process (a torchrun group trains them together)."""
        return self.session.train(lease)
