"""The hub service: one object that the HTTP routes (and in-process callers) talk to, made of
one part per step of the protocol.

    runs           creating runs, quotas, who may work on and read a run   (hub.runs)
    leases         registering workers, leases on the current round         (hub.leases)
    contributions  admit -> assess -> commit of an upload                   (hub.contributions)
    rounds         closing a due round, recording a failed close            (hub.rounds)
    merges         merging modules as a validated step                      (hub.merges)
    reads          status, rounds, versions, contributions, blobs           (hub.reads)
    pool, pledges  pool workers placed on runs by fair share; pledges       (hub.pool, hub.pledges)
    verifier       replaying workers' claims, catching those that fail      (hub.verify)
    datasets       dataset versions, their files, derivations, withdrawal    (hub.datasets)

Each commits a new version through ``hub.versions`` and looks rows up through ``hub.queries``.
Uploading and closing are separate calls: ``submit`` records a contribution and answers;
``close_if_due`` (which the HTTP route runs after the answer is sent) closes the round when it
is due. Locks are described in ``hub.context``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tessera.api.messages import (
    Balance,
    ContributionInfo,
    ContributionMeta,
    ContributionReply,
    CreateRunReply,
    LeaseReply,
    RegisterReply,
    RoundMetrics,
    RunStatus,
    VersionInfo,
)
from tessera.blobs import BlobStore
from tessera.hub.adapters import Adapters
from tessera.hub.auth import Principal
from tessera.hub.config import HubConfig
from tessera.hub.context import HubContext, RunLocks
from tessera.hub.contributions import Contributions
from tessera.hub.datasets import Datasets
from tessera.hub.leases import Leases
from tessera.hub.ledger import Ledger
from tessera.hub.merges import Merges
from tessera.hub.pledges import Pledges
from tessera.hub.pool import Pool
from tessera.hub.providers import ProviderService
from tessera.hub.reads import Reads
from tessera.hub.rounds import Rounds
from tessera.hub.runs import Runs
from tessera.hub.runtime import RunRuntime
from tessera.hub.runtimes import Runtimes
from tessera.hub.signal import RoundSignal
from tessera.hub.state import State
from tessera.hub.verify import Verifier


class HubService:
    """The hub's runs, leases, contributions and rounds, on ``state`` and ``store``.

    Keeps nothing that matters in memory: runtimes (models, held-out data) and parsed recipes are
    caches rebuilt from the database; ``config`` says what code and data the hub trusts and the
    limits it holds providers to.
    """

    def __init__(
        self,
        state: State,
        store: BlobStore,
        clock: Callable[[], float] = time.time,
        config: HubConfig | None = None,
    ) -> None:
        self.config = config or HubConfig()
        self.trust, self.limits = self.config.trust, self.config.limits
        self.state, self.store, self.clock = state, store, clock
        self.providers = ProviderService(state, clock)
        self.ledger = Ledger(state)
        self.rounds_closed = RoundSignal()
        runtimes = Runtimes(state, store, self.trust, self.limits.cached_runtimes)
        self.hub = HubContext(
            state, store, clock, self.config, self.providers, runtimes, RunLocks(), self.rounds_closed
        )
        self.runs = Runs(self.hub)
        self.leases = Leases(self.hub, self.runs)
        self.verifier = Verifier(self.hub)
        self.uploads = Contributions(self.hub, self.runs, self.verifier)
        self.closing = Rounds(self.hub)
        self.merges = Merges(self.hub, self.runs)
        self.reads = Reads(self.hub, self.runs)
        self.adapters = Adapters(self.hub, self.runs)
        self.pledges = Pledges(self.hub)
        self.pool = Pool(self.hub, self.pledges)
        self.datasets = Datasets(self.hub)

    # --- runs and workers --------------------------------------------------------------

    def create_run(self, who: Principal, recipe_text: str) -> CreateRunReply:
        return self.runs.create(who, recipe_text)

    def register(
        self,
        run_id: str,
        who: Principal,
        name: str,
        module: str | None = None,
        ranks: int = 1,
        member_id: str | None = None,
        held_datasets: list[str] | None = None,
    ) -> RegisterReply:
        return self.leases.register(run_id, who, name, module, ranks, member_id, held_datasets)

    def lease(self, run_id: str, who: Principal, worker_id: str, wait_s: float = 0.0) -> LeaseReply:
        return self.leases.lease(run_id, who, worker_id, wait_s)

    def try_lease(self, run_id: str, who: Principal, worker_id: str) -> LeaseReply:
        return self.leases.try_lease(run_id, who, worker_id)

    # --- contributions and rounds ------------------------------------------------------

    def upload_limit(self, run_id: str, who: Principal) -> int:
        """The most bytes an upload to the run may have (403 unless ``who`` may work on it)."""
        self.runs.authorize(run_id, who)
        return self.uploads.upload_limit(run_id)

    def submit(self, run_id: str, who: Principal, meta: ContributionMeta, body: bytes) -> ContributionReply:
        """Record a contribution (nothing is stored if it is refused); the round is not closed here."""
        return self.uploads.submit(run_id, who, meta, body)

    def close_if_due(self, run_id: str) -> bool:
        """Close the run's round if it is due; never raises (a failure is recorded on the run)."""
        return self.closing.close_if_due(run_id)

    def verify_pending(self, limit: int = 1) -> int:
        """Replay up to ``limit`` contributions marked for it (tessera.hub.verify)."""
        return self.verifier.verify_pending(limit)

    def close_due_rounds(self) -> int:
        """Close every round past its deadline that has work in it."""
        return self.closing.close_due()

    # --- reading -----------------------------------------------------------------------

    def status(self, run_id: str, who: Principal) -> RunStatus:
        return self.reads.status(run_id, who)

    def rounds(self, run_id: str, who: Principal) -> list[RoundMetrics]:
        return self.reads.rounds(run_id, who)

    def version(self, run_id: str, who: Principal, number: int | None = None) -> VersionInfo:
        return self.reads.version(run_id, who, number)

    def contributions(
        self, run_id: str, who: Principal, round_number: int | None = None
    ) -> list[ContributionInfo]:
        return self.reads.contributions(run_id, who, round_number)

    def credits(self, run_id: str, who: Principal) -> list[Balance]:
        """Compute credited per provider for this run (read by whoever may read the run)."""
        self.runs.authorize_read(run_id, who)
        return self.ledger.run_credits(run_id)

    def download(self, run_id: str, who: Principal, sha: str) -> bytes:
        return self.reads.download(run_id, who, sha)

    def run_ids(self, who: Principal) -> list[str]:
        return self.reads.run_ids(who)

    # --- the runtime cache -------------------------------------------------------------

    def runtime(self, run_id: str) -> RunRuntime:
        return self.hub.runtimes.get(run_id)

    def cached_runs(self) -> list[str]:
        """Runs whose runtime (model, held-out data) this process holds, least recently used first."""
        return self.hub.runtimes.cached()
