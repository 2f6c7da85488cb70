"""Merges at the hub: modules trained from one base combined into a target module, as a
versioned, validated step (accepted only if the target's held-out loss does not get worse).

Every merge is recorded with its inputs and evaluation (``merges`` table); an accepted one is a
new version of the target whose lineage names the merge.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.api.messages import MergeInput, MergeReply, MergeRequest
from tessera.core.merging import MergeSettings, align, merge
from tessera.core.tensors import TensorDict, from_bytes, to_bytes
from tessera.errors import ConfigError, Conflict, Forbidden, NotFound
from tessera.hub.auth import Principal
from tessera.hub.modules import frozen_versions, modules_of
from tessera.hub.state import MergeRecord, Run, Version, new_round
from tessera.hub.views import version_info

if TYPE_CHECKING:
    from tessera.hub.service import HubService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What a merge reads, fixed in one transaction."""

    target: Run
    latest: Version
    first: Version
    inputs: list[tuple[str, Run, Version, Version]]  # module, run, latest, version 0


class Merges:
    def __init__(self, hub: HubService) -> None:
        self.hub = hub

    def merge(self, run_id: str, who: Principal, req: MergeRequest) -> MergeReply:
        """Merge, evaluate the target before and after on its held-out data (with the versions it
        depends on now), and keep the merge only if the loss did not rise."""
        plan = self._plan(run_id, who, req)  # who may merge, and what exists, before the settings
        settings = MergeSettings(req.method, tuple(req.weights), req.scale, req.density)
        current = from_bytes(self.hub.store.get(plan.latest.blob_sha))
        merged = self._merged(plan, current, settings)
        runtime = self.hub.runtime(plan.target.id)
        with self.hub._lock, self.hub.state.transaction() as s:  # the runtime's model is shared
            self.hub.load_frozen(runtime, frozen_versions(s, plan.target, runtime.recipe) or [])
            before, after = runtime.evaluate(current), runtime.evaluate(merged)
        reason = None
        if after > before:
            reason = (
                f"held-out loss would rise from {before:.4f} to {after:.4f}; the target keeps its version"
            )
        return self._record(run_id, who, req, plan, merged, (before, after), reason)

    def _plan(self, run_id: str, who: Principal, req: MergeRequest) -> Plan:
        self.hub.authorize(run_id, who)
        with self.hub.state.transaction() as s:
            parent = self.hub._run(s, run_id)
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
        with hub._lock, hub.state.transaction() as s:
            target = hub._run(s, plan.target.id, lock=True)
            if latest(s, target).id != plan.latest.id:
                raise Conflict(f"module {req.target} got a new version meanwhile; merge again")
            record = MergeRecord(
                id=hub_id(),
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
        blob, now = to_bytes(merged), self.hub.clock()
        version = Version(
            id=hub_id(),
            run_id=target.id,
            number=parent.number + 1,
            blob_sha=self.hub.store.put(blob),
            nbytes=len(blob),
            parent_id=parent.id,
            contributions=[],
            val_loss=after,
            created_at=now,
            merge_id=record.id,
        )
        s.add(version)
        record.version_id = version.id
        if target.status == "active":
            open_round = self.hub._round(s, target.id, target.current_round)
            open_round.closed_at, open_round.close_reason, open_round.version_id = now, "merge", version.id
            open_round.val_loss = after
        target.current_round = version.number
        if target.status == "active" and target.current_round < self.hub.runtime(target.id).recipe.run.rounds:
            s.add(new_round(target.id, target.current_round, version.id, now))
        elif target.status == "active":
            target.status, target.finished_at = "finished", now
            self.hub.finish_parent(s, target, now)

    def history(self, run_id: str, who: Principal) -> list[MergeReply]:
        """Every merge of the run, accepted or rejected, oldest first."""
        self.hub.authorize_read(run_id, who)
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
    version = s.scalar(
        select(Version).where(Version.run_id == run.id).order_by(Version.number.desc()).limit(1)
    )
    if version is None:
        raise NotFound(f"module {run.module} has no version")
    return version


def first(s: Session, run: Run) -> Version:
    version = s.scalar(select(Version).where(Version.run_id == run.id, Version.number == 0))
    if version is None:
        raise NotFound(f"module {run.module} has no version 0")
    return version


def hub_id() -> str:
    return uuid.uuid4().hex
