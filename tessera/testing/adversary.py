"""Hostile workers and a lockstep driver, to measure what validation and robust aggregation buy.

An adversary trains like an honest worker, then corrupts what it uploads:
- ``sign_flip``: the pseudo-gradient negated and scaled 10x (pushes the model uphill);
- ``noise``: Gaussian noise with the same per-tensor scale as its honest update;
- ``nan``: NaN values (refused by the hub's structural checks with a 4xx).
The lockstep driver runs rounds deterministically in one process on a real ``HubService``:
every worker leases, trains and uploads in a fixed order, then rounds past their deadline close.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tessera.api.messages import LeaseGrant
from tessera.core.pseudo_gradient import pseudo_gradient
from tessera.core.tensors import TensorDict, model_float_tensors, to_bytes
from tessera.errors import ContributionRejected
from tessera.hub.auth import Principal
from tessera.hub.service import HubService
from tessera.testing.inprocess import InProcessClient
from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSettings, contribution_meta

Attack = Literal["sign_flip", "noise", "nan"]

# Recipe sections of the robust setting that tests/test_byzantine.py and bench/byzantine.py run.
ROBUST_SECTIONS = """
[validation]
norm_bound = 3.0
probe = true
probe_tolerance = 0.05

[aggregation]
method = "trimmed_mean"
trim_fraction = 0.25
clip_multiple = 2.0
min_cosine = 0.1
"""


def corrupt(delta: TensorDict, attack: Attack, generator: torch.Generator) -> TensorDict:
    if attack == "sign_flip":
        return {k: -10.0 * v for k, v in delta.items()}
    if attack == "noise":
        return {k: torch.randn(v.shape, generator=generator) * v.std() for k, v in delta.items()}
    return {k: torch.full_like(v, float("nan")) for k, v in delta.items()}


@dataclass
class Outcome:
    """What became of each upload of one worker: accepted, rejected (with reason) or refused (4xx)."""

    statuses: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


class LockstepWorker:
    def __init__(
        self, service: HubService, token: str, run_id: str, state_dir: Path, attack: Attack | None
    ) -> None:
        client = InProcessClient(service, token, run_id)
        settings = WorkerSettings(state_dir, name=attack or "honest", trust=service.trust)  # one machine
        self.loop = WorkLoop(client, settings)
        self.attack = attack
        self.generator = torch.Generator().manual_seed(1234)
        self.outcome = Outcome()

    def work(self, grant: LeaseGrant) -> None:
        session = self.loop.session
        session.model.load_state_dict(session.tensors_of(grant))
        base = model_float_tensors(session.model)
        result = self.loop.train(grant)
        delta = pseudo_gradient(base, session.model.state_dict())
        if self.attack is not None:
            delta = corrupt(delta, self.attack, self.generator)
        meta = contribution_meta(grant, session.identity.worker_id, result)
        try:
            reply = session.client.submit(meta, to_bytes(delta))
        except ContributionRejected as exc:
            self.outcome.statuses.append("refused")
            self.outcome.reasons.append(str(exc))
            return
        self.outcome.statuses.append(reply.status)
        self.outcome.reasons.append(reply.reason or "")


def lockstep_run(
    service: HubService,
    admin: Principal,
    run_id: str,
    attacks: list[Attack | None],
    state_root: Path,
    advance_clock: Callable[[float], None],
) -> list[LockstepWorker]:
    """Run every round with all workers in order; rounds that miss quorum close at the deadline.

    Each worker is a provider of its own, created with the ``admin`` principal.
    """
    workers = []
    for i, attack in enumerate(attacks):
        token = service.providers.create_provider(admin, f"{run_id[:8]}-worker-{i}", "person", False).token
        workers.append(LockstepWorker(service, token, run_id, state_root / f"w{i}", attack))
    deadline = workers[0].loop.session.recipe.run.round_deadline_s
    while (status := service.status(run_id, admin)).status == "active":
        for worker in workers:
            session = worker.loop.session
            reply = session.client.lease(session.identity.worker_id)
            if reply.lease is not None:
                worker.work(reply.lease)
        if (
            service.status(run_id, admin).rounds_done == status.rounds_done
        ):  # no quorum: wait out the deadline
            advance_clock(deadline + 1)
            service.close_due_rounds()
    return workers
