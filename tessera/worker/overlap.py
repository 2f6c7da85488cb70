"""Overlapped rounds: the worker keeps training while its contribution uploads and the next
version downloads, so compute waits on the network only at the start of the run.

Eager application of the outer update (``[communication] overlap = true``): after H steps from
version v (local model v + p), the worker uploads -p in the background and trains on; a
background thread then leases the next round and fetches its version w. At the next step
boundary the worker moves its model by w minus the point it had reached at the upload, so the
model becomes w plus the progress made since: the outer update arrives one to a few steps late
(the steps it took the network), never lost. The next contribution is based on w, like any
other, and counts every step since the upload. If H steps are done before w has arrived, the
worker waits for it: a contribution counts at most H steps from before its lease plus the H of
its lease (the hub accepts at most 2H on an overlapped run).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tessera.api.messages import ContributionMeta, ContributionReply, LeaseGrant
from tessera.core.inner import Batch, InnerResult
from tessera.core.tensors import TensorDict
from tessera.worker.session import Step, WorkerSummary, WorkSession


@dataclass
class Next:
    """What the background thread brings: the next lease and its version, or the run's end."""

    lease: LeaseGrant | None = None
    tensors: TensorDict | None = None
    reply: ContributionReply | None = None
    error: BaseException | None = None


class Prefetch(threading.Thread):
    """Upload the finished contribution (if any), then lease the next round and fetch its version."""

    def __init__(self, session: WorkSession, upload: tuple[ContributionMeta, bytes] | None) -> None:
        super().__init__(name="tessera-prefetch", daemon=True)
        self.session = session
        self.upload = upload
        self.result = Next()
        self.ready = threading.Event()
        self.start()

    def run(self) -> None:
        session = self.session
        try:
            if self.upload is not None:
                self.result.reply = session.client.submit(*self.upload)
            while True:
                reply = self.session.client.lease(
                    self.session.identity.worker_id, wait_s=self.session.settings.wait_s
                )
                if reply.status == "done":
                    break
                if reply.lease is not None:
                    self.result.lease = reply.lease
                    self.result.tensors = session.tensors_of(reply.lease)
                    break
        except BaseException as exc:  # handed to the training thread, which raises it
            self.result.error = exc
        finally:
            self.ready.set()

    def take(self, block: bool) -> Next | None:
        if not self.ready.wait(None if block else 0):
            return None
        if self.result.error is not None:
            raise self.result.error
        return self.result


@dataclass
class Shift:
    """One eager application: the version the model moved onto, and how far the progress made
    since the upload drifted in the move (float rounding only)."""

    version_number: int
    drift: float


@dataclass
class Progress:
    """Steps since the last upload: what the next contribution counts."""

    steps: int = 0
    tokens: int = 0
    compute_s: float = 0.0
    losses: list[float] = field(default_factory=list)

    def add(self, loss: float, tokens: int, seconds: float) -> None:
        self.steps += 1
        self.tokens += tokens
        self.compute_s += seconds
        self.losses.append(loss)

    def result(self) -> InnerResult:
        return InnerResult(
            self.steps, self.tokens, sum(self.losses) / len(self.losses), self.losses[-1], self.compute_s
        )


class Overlapped:
    """A session's rounds with their communication overlapped with training; ``shifts`` records
    each eager application of an outer update."""

    def __init__(self, session: WorkSession) -> None:
        self.session = session
        self.model = session.model
        self.shifts: list[Shift] = []

    def run(
        self,
        summary: WorkerSummary,
        stop: threading.Event | None = None,
        on_contribution: Callable[[ContributionReply], None] | None = None,
    ) -> WorkerSummary:
        first = Prefetch(self.session, None).take(block=True)  # the only wait on the network
        if first is None or first.lease is None or first.tensors is None:
            return summary
        self.session.load(first.tensors, first.lease)
        lease, anchor, pending, sent = first.lease, self.session.trained(), None, None
        batches, progress = self.session.batches(lease), Progress()
        while stop is None or not stop.is_set():
            h_done = progress.steps >= lease.inner_steps  # H steps since the upload: wait for w
            if pending is not None and (arrived := pending.take(block=h_done)) is not None:
                self.record(arrived.reply, sent, summary, on_contribution)
                if arrived.lease is None or arrived.tensors is None:
                    return summary  # the run is done; progress since the last upload is not needed
                lease, anchor = arrived.lease, self.move_onto(arrived.tensors, anchor, arrived.lease)
                batches, pending = self.session.batches(lease), None
            # a step made while the next lease travels counts towards the next round
            toward = lease.round + 1 if pending is not None else lease.round
            total = lease.inner_steps if toward == lease.round else None  # None: the next lease's H
            self.step(next(batches), progress, summary, toward, total)
            if pending is None and progress.steps >= lease.inner_steps:
                sent = progress.result()
                pending = Prefetch(self.session, self.session.contribution(lease, anchor, sent))
                anchor, progress = self.session.trained(), Progress()
        if pending is not None and (arrived := pending.take(block=True)) is not None:
            self.record(arrived.reply, sent, summary, on_contribution)
        return summary

    def step(
        self, batch: Batch, progress: Progress, summary: WorkerSummary, number: int, total: int | None
    ) -> None:
        """One inner step, told to the reporter as one of the ``total`` steps of round ``number``
        (None: a step made while the next lease travels, its H not known yet: the round's in the
        run's sync schedule), at the learning rate of that place in the run's schedule."""
        schedule = self.session.recipe.schedule
        place = min(number, self.session.recipe.run.rounds - 1)  # past the last round: its end
        steps = schedule.steps(place) if total is None else total
        begin = time.perf_counter()
        loss, n = self.session.trainer.step(batch, schedule.lr_scale(place, steps)(progress.steps))
        spent = time.perf_counter() - begin
        progress.add(loss, n, spent)
        summary.compute_s += spent
        self.session.reporter.step(
            Step(number, progress.steps, steps, progress.tokens, loss, progress.compute_s)
        )

    def record(
        self,
        reply: ContributionReply | None,
        result: InnerResult | None,
        summary: WorkerSummary,
        on_contribution: Callable[[ContributionReply], None] | None,
    ) -> None:
        """A contribution's reply, once its upload is done."""
        if reply is None:
            return
        summary.contributions.append(reply)
        if result is not None:
            self.session.reporter.contribution(reply, result)
        if on_contribution is not None:
            on_contribution(reply)

    @torch.no_grad()
    def move_onto(self, version: TensorDict, reached: TensorDict, lease: LeaseGrant) -> TensorDict:
        """Model := version + (model - reached): the outer update applied, the progress kept."""
        drift = 0.0
        state = self.model.state_dict()
        for name, base in version.items():
            if not base.is_floating_point():
                state[name].copy_(base)
                continue
            progress = state[name] - reached[name]
            state[name].copy_(base + progress)
            drift = max(drift, float(((state[name] - base) - progress).abs().max()))
        self.shifts.append(Shift(lease.version_number, drift))
        return {k: v.clone() for k, v in version.items() if v.is_floating_point()}
