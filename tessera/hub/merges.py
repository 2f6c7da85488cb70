"""Merges at the hub: modules trained from one base combined into a target module, as a
versioned, validated step (accepted only if the target's held-out loss does not get worse).

Every merge is recorded with its inputs and evaluation (``merges`` table); an accepted one is a
new version of the target whose lineage names the merge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.api.messages import MergeInput, MergeReply, MergeRequest
from tessera.core.merging import MergeSettings, align, merge
from tessera.core.tensors import TensorDict, from_bytes, to_bytes
from tessera.errors import ConfigError, Conflict, Forbidden, NotFound
from tessera.hub import queries
from tessera.hub.auth import Principal
from tessera.hub.context import HubContext
from tessera.hub.modules import frozen_versions, modules_of
from tessera.hub.runs import Runs
from tessera.hub.tables import MergeRecord, Run, Version, new_id
from tessera.hub.versions import NewVersion, commit_version
from tessera.hub.views import version_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What a merge reads, fixed in one transaction."""

    target: Run
    latest: Version
    first: Version
    inputs: list[tuple[str, Run, Version, Version]]  # module, run, latest, version 0


class Merges:
    def __init__(self, hub: HubContext, runs: Runs) -> None:
        self.hub, self.runs = hub, runs

    def merge(self, run_id: str, who: Principal, req: MergeRequest) -> MergeReply:
        """Merge, evaluate the target before and after on its held-out data (with the versions it
        depends on now), and keep the merge only if the loss did not rise."""
        plan = self._plan(run_id, who, req)  # who may merge, and what exists, before the settings
        settings = MergeSettings(req.method, tuple(req.weights), req.scale, req.density)
        current = from_bytes(self.hub.store.get(plan.latest.blob_sha))
        merged = self._merged(plan, current, settings)
        runtime = self.hub.runtimes.get(plan.target.id)
        with self.hub.state.transaction() as s:
            frozen = frozen_versions(s, plan.target, runtime.recipe) or []
        with runtime.lock:  # both evaluations on the same frozen modules
            self.hub.runtimes.load_frozen(runtime, frozen)
            before, after = runtime.evaluate(current), runtime.evaluate(merged)
        reason = None
        if after > before:
            reason = (
                f"held-out loss would rise from {before:.4f} to {after:.4f}; the target keeps its version"
            )
        return self._record(run_id, who, req, plan, merged, (before, after), reason)

    def _plan(self, run_id: str, who: Principal, req: MergeRequest) -> Plan:
        self.runs.authorize(run_id, who)
        with self.hub.state.transaction() as s:
            parent = queries.run(s, run_id)
            if not (who.is_admin or who.provider_id == parent.owner_id):
                raise Forbidden(
                    "a merge changes the run's model: only the run's owner or a hub admin may merge"
                )
            family = modules_of(s, parent)
            unknown = sorted({req.target, *req.inputs} - set(family))
            if unknown:
                raise NotFound(
                    f"no modules {unknown} in run {run_id}; its modules: {', '.join(family) or 'none'}"
                )
            target = family[req.target]
            if target.status == "active" and target.workers_registered > 0:
                raise Conflict(f"module {req.target} is training; merge into it after it finishes")
            inputs = [(m, family[m], latest(s, family[m]), first(s, family[m])) for m in req.inputs]
            return Plan(target, latest(s, target), first(s, target), inputs)

    def _merged(self, plan: Plan, current: TensorDict, settings: MergeSettings) -> TensorDict:
        """The merged tensors; ConfigError unless every input started from the target's version 0."""
        get = self.hub.store.get
        base = from_bytes(get(plan.first.blob_sha))
        models = []
        for module, _, newest, start in plan.inputs:
            if any(
                not v.equal(base[k]) for k, v in align(base, from_bytes(get(start.blob_sha)), module).items()
            ):
                raise ConfigError(
                    f"module {module} did not start from the target's version 0; merging needs one base"
                )
            models.append(align(base, from_bytes(get(newest.blob_sha)), module))
        floats = {k: v for k, v in base.items() if v.is_floating_point()}
        return {**current, **merge(floats, models, settings)}

    def _record(
        self,
        run_id: str,
        who: Principal,
        req: MergeRequest,
        plan: Plan,
        merged: TensorDict,
        losses: tuple[float, float],
        reason: str | None,
    ) -> MergeReply:
        hub, now, (before, after) = self.hub, self.hub.clock(), losses
        inputs = [
            MergeInput(module=m, run_id=r.id, version_id=v.id, number=v.number) for m, r, v, _ in plan.inputs
        ]
        with hub.locks.of(plan.target.id), hub.state.transaction() as s:
            target = queries.run(s, plan.target.id, lock=True)
            if latest(s, target).id != plan.latest.id:
                raise Conflict(f"module {req.target} got a new version meanwhile; merge again")
            record = MergeRecord(
                id=new_id(),
                run_id=run_id,
                target_run_id=target.id,
                target=req.target,
                method=req.method,
                settings=req.model_dump(exclude={"target", "inputs"}),
                inputs=[i.model_dump() for i in inputs],
                base_version_id=plan.latest.id,
                val_loss_before=before,
                val_loss_after=after,
                status="rejected" if reason else "accepted",
                reason=reason,
                created_by=who.provider_id,
                created_at=now,
            )
            s.add(record)
            if reason is None:
                self._publish(s, target, plan.latest, merged, record, after)
            log.info(
                "run %s: merge into %s %s (held-out loss %.4f)", run_id, req.target, record.status, after
            )
            s.flush()
            return merge_reply(s, record)

    def _publish(
        self, s: Session, target: Run, parent: Version, merged: TensorDict, record: MergeRecord, after: float
    ) -> None:
        """The target's next version; its open round (no work in it) closes on the merge."""
        rounds = self.hub.runtimes.get(target.id).recipe.run.rounds
        new = NewVersion(to_bytes(merged), after, merge_id=record.id)
        version = commit_version(s, self.hub.store, target, parent, new, "merge", self.hub.clock(), rounds)
        record.version_id = version.id

    def history(self, run_id: str, who: Principal) -> list[MergeReply]:
        """Every merge of the run, accepted or rejected, oldest first."""
        self.runs.authorize_read(run_id, who)
        with self.hub.state.transaction() as s:
            rows = s.scalars(
                select(MergeRecord).where(MergeRecord.run_id == run_id).order_by(MergeRecord.created_at)
            )
            return [merge_reply(s, r) for r in rows]


def merge_reply(s: Session, r: MergeRecord) -> MergeReply:
    version = s.get(Version, r.version_id) if r.version_id else None
    return MergeReply(
        merge_id=r.id,
        status=r.status,  # type: ignore[arg-type]
        target=r.target,
        method=r.method,
        inputs=[MergeInput.model_validate(i) for i in r.inputs],
        val_loss_before=r.val_loss_before,
        val_loss_after=r.val_loss_after,
        reason=r.reason,
        version=None if version is None else version_info(version),
    )


def latest(s: Session, run: Run) -> Version:
    return queries.latest_version(s, run.id)


def first(s: Session, run: Run) -> Version:
    return queries.version(s, run.id, 0)
