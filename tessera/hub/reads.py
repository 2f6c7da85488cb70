"""What readers of a run see: its status (a modular run's added up from its modules), rounds,
versions, contributions, blobs, lineage and events, for those who may read it."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tessera.api.commons import RunEventInfo, RunLineage
from tessera.api.messages import ContributionInfo, RoundMetrics, RunStatus, VersionInfo
from tessera.errors import ConfigError, NotFound
from tessera.hub import queries
from tessera.hub.auth import Principal, may_read
from tessera.hub.context import HubContext
from tessera.hub.lineage import run_marks, version_lineage
from tessera.hub.modules import modules_of
from tessera.hub.runs import Runs
from tessera.hub.tables import RoundRecord, Run, RunEvent
from tessera.hub.views import contribution_info, round_metrics, version_info


class Reads:
    def __init__(self, hub: HubContext, runs: Runs) -> None:
        self.hub, self.runs = hub, runs

    def contributions(
        self, run_id: str, who: Principal, round_number: int | None = None
    ) -> list[ContributionInfo]:
        """Contributions of a run (or one round), with status and the reason of rejections."""
        self.runs.authorize_read(run_id, who)
        with self.hub.state.reading() as s:
            queries.run(s, run_id)
            return [contribution_info(c) for c in queries.contributions(s, run_id, round_number)]

    def download(self, run_id: str, who: Principal, sha: str) -> bytes:
        """A version's blob or its change from the parent; its size counts as bytes out of the round."""
        self.runs.authorize_read(run_id, who)
        with self.hub.state.reading() as s:
            if not queries.owns_blob(s, run_id, sha):
                raise NotFound(f"blob {sha} is not a version (or version change) of run {run_id}")
        data = self.hub.store.get(sha)  # read outside any transaction
        with self.hub.state.transaction() as s:
            run = queries.run(s, run_id)
            if run.status == "active":  # an atomic increment: no lock, no lost update
                s.execute(
                    update(RoundRecord)
                    .where(RoundRecord.run_id == run_id, RoundRecord.number == run.current_round)
                    .values(bytes_out=RoundRecord.bytes_out + len(data))
                )
        return data

    def status(self, run_id: str, who: Principal) -> RunStatus:
        """A run's progress; a modular run's is its modules' (``modules``) added up."""
        self.runs.authorize_read(run_id, who)
        with self.hub.state.reading() as s:
            run = queries.run(s, run_id)
            family = modules_of(s, run)
            if not family:
                return self._status(s, run, who)
            modules = [self._status(s, m, who) for m in family.values()]
            return RunStatus(
                run_id=run.id,
                name=run.name,
                status=run.status,  # type: ignore[arg-type]
                paused=run.paused,
                error=next((m.error for m in modules if m.error), None),
                error_at=next((m.error_at for m in modules if m.error), None),
                rounds_total=sum(m.rounds_total for m in modules),
                rounds_done=sum(m.rounds_done for m in modules),
                current_round=0,
                latest_version=None,
                initial_val_loss=None,
                workers=sum(m.workers for m in modules),
                recipe=run.recipe,
                modules=modules,
            )

    def _status(self, s: Session, run: Run, who: Principal) -> RunStatus:
        latest = queries.latest_version(s, run.id)
        return RunStatus(
            run_id=run.id,
            name=run.name,
            status=run.status,  # type: ignore[arg-type]
            paused=run.paused,
            error=run.error,
            error_at=run.error_at,
            rounds_total=self._rounds_total(run),
            rounds_done=latest.number,
            current_round=run.current_round,
            latest_version=version_info(latest),
            initial_val_loss=queries.version(s, run.id, 0).val_loss,
            workers=queries.workers(s, run.id),
            recipe=run.recipe,
            module=run.module,
            parent_id=run.parent_id,
            marks=run_marks(s, who, run),
        )

    def _rounds_total(self, run: Run) -> int:
        try:
            return self.hub.runtimes.recipe_of(run).run.rounds
        except ConfigError:  # a recipe stored before this hub checked recipes as it does now
            return run.current_round

    def rounds(self, run_id: str, who: Principal) -> list[RoundMetrics]:
        self.runs.authorize_read(run_id, who)
        with self.hub.state.reading() as s:
            queries.run(s, run_id)
            return [round_metrics(r) for r in queries.rounds(s, run_id)]

    def version(self, run_id: str, who: Principal, number: int | None = None) -> VersionInfo:
        self.runs.authorize_read(run_id, who)
        with self.hub.state.reading() as s:
            run = queries.run(s, run_id)
            return version_info(queries.version(s, run_id, run.current_round if number is None else number))

    def lineage(self, run_id: str, who: Principal, number: int | None = None) -> RunLineage:
        """What produced the run's version ``number`` (default: its latest)."""
        self.runs.authorize_read(run_id, who)
        with self.hub.state.reading() as s:
            run = queries.run(s, run_id)
            latest = queries.latest_version(s, run_id).number
            return version_lineage(
                s, who, run, queries.version(s, run_id, latest if number is None else number)
            )

    def events(self, run_id: str, who: Principal) -> list[RunEventInfo]:
        """What the run's owners were told (a dataset it trains on was withdrawn), oldest first."""
        self.runs.authorize_read(run_id, who)
        with self.hub.state.reading() as s:
            run = queries.run(s, run_id)
            rows = s.scalars(
                select(RunEvent).where(RunEvent.run_id == (run.parent_id or run.id)).order_by(RunEvent.id)
            )
            return [RunEventInfo(kind=e.kind, detail=e.detail, subject=e.subject, at=e.at) for e in rows]

    def run_ids(self, who: Principal) -> list[str]:
        """The runs ``who`` may see, oldest first."""
        with self.hub.state.reading() as s:
            return [r.id for r in queries.top_level_runs(s) if may_read(who, r.owner_id, r.collective_id)]
