"""A worker serving the pool: it joins once (its pool id kept in its state folder, so a restart
is the same pool worker), then asks the hub where to work and works there, one run at a time,
until the hub moves it (asked after each contribution), the run finishes, or it is stopped.

Each run gets its own session in ``state_dir/runs/<run id>`` (a run it comes back to resumes as
the same worker). A run whose code this machine does not trust is refused before anything of it
is imported, and left out of every later placement. While the hub has nothing for it (outside
its windows, or every run it may work on has its workers) it waits as long as the hub says.
Rounds overlapped with communication (``[communication] overlap``) are worked until the run
finishes: such a run is left only between runs, not between its rounds.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tessera.api.client import HubClient
from tessera.api.messages import Assignment, ContributionReply, PoolJoinRequest
from tessera.errors import ConfigError
from tessera.worker.loop import WorkLoop
from tessera.worker.session import Reporter, WorkerSettings, WorkerSummary

log = logging.getLogger(__name__)


@dataclass
class PoolSummary:
    """What a pool worker did: its pool id and each stay on a run, in order."""

    member_id: str = ""
    stays: list[tuple[str, WorkerSummary]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def contributions(self) -> list[ContributionReply]:
        return [c for _, summary in self.stays for c in summary.contributions]


class PoolLoop:
    """Serves the pool through ``client`` as ``offer`` says, with ``settings`` for each run."""

    def __init__(
        self,
        client: HubClient,
        settings: WorkerSettings,
        offer: PoolJoinRequest,
        reporter: Reporter | None = None,
    ) -> None:
        self.client, self.settings, self.offer, self.reporter = client, settings, offer, reporter
        self.summary = PoolSummary(member_id=self._member_id())
        self._next: Assignment | None = None

    def _member_id(self) -> str:
        """This worker's pool id: the one in its state folder, or a new one from joining."""
        path = self.settings.state_dir / "pool.json"
        if path.exists():
            return str(json.loads(path.read_text())["member_id"])
        member = self.client.join_pool(self.offer)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps({"member_id": member.member_id}))
        log.info("joined the pool as %s (%s)", member.member_id, member.name)
        return member.member_id

    def run(
        self,
        stop: threading.Event | None = None,
        on_contribution: Callable[[ContributionReply], None] | None = None,
    ) -> PoolSummary:
        """Serve the pool until ``stop`` is set."""
        stop = stop or threading.Event()
        while not stop.is_set():
            assignment = self._next or self.client.assign(self.summary.member_id, self.summary.refused)
            self._next = None
            if assignment.status == "idle" or assignment.run_id is None:
                wait = assignment.retry_after_s
                log.info("no work from the pool: %s; asking again in %.0f s", assignment.reason, wait)
                stop.wait(wait)
                continue
            self._stay(assignment.run_id, stop, on_contribution)
        return self.summary

    def _stay(
        self, run_id: str, stop: threading.Event, on_contribution: Callable[[ContributionReply], None] | None
    ) -> None:
        """Work on ``run_id`` until the run is done or the hub moves this worker elsewhere."""
        self.client.select_run(run_id)
        settings = replace(self.settings, state_dir=self.settings.state_dir / "runs" / run_id)
        settings = replace(settings, member_id=self.summary.member_id)
        try:
            loop = WorkLoop(self.client, settings, self.reporter)
        except ConfigError as exc:  # code or data this machine does not trust, or cannot build
            log.warning("refusing run %s: %s", run_id, exc)
            self.summary.refused.append(run_id)
            return
        log.info("working on run %s for the pool", run_id)
        summary = loop.run(stop, on_contribution, leave=lambda: self._moved(run_id))
        self.summary.stays.append((run_id, summary))

    def _moved(self, run_id: str) -> bool:
        """Whether the hub now places this worker elsewhere (kept as the next assignment)."""
        assignment = self.client.assign(self.summary.member_id, self.summary.refused)
        if assignment.run_id == run_id:
            return False
        self._next = assignment
        return True


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
