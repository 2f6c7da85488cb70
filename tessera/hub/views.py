"""Rows of the hub's state as the typed messages the API returns."""

from __future__ import annotations

from tessera.api.messages import (
    ContributionInfo,
    ContributionReply,
    FrozenModule,
    RoundMetrics,
    VersionInfo,
)
from tessera.hub.tables import Contribution, RoundRecord, Run, Version


def frozen_module(name: str, run: Run, v: Version) -> FrozenModule:
    return FrozenModule(
        module=name, run_id=run.id, version_number=v.number, blob_sha256=v.blob_sha, nbytes=v.nbytes
    )


def contribution_reply(c: Contribution, duplicate: bool = False) -> ContributionReply:
    return ContributionReply(
        contribution_id=c.id,
        status=c.status,  # type: ignore[arg-type]
        reason=c.reason,
        round=c.round,
        weight=c.weight,
        duplicate=duplicate,
        final=c.status != "pending",
    )


def contribution_info(c: Contribution) -> ContributionInfo:
    return ContributionInfo(
        contribution_id=c.id,
        worker_id=c.worker_id,
        round=c.round,
        base_version_number=c.base_version_number,
        status=c.status,  # type: ignore[arg-type]
        reason=c.reason,
        tokens=c.tokens,
        norm=c.norm,
        weight=c.weight,
        nbytes=c.nbytes,
        verified=c.verified,
    )


def version_info(v: Version) -> VersionInfo:
    return VersionInfo(
        version_id=v.id,
        number=v.number,
        blob_sha256=v.blob_sha,
        nbytes=v.nbytes,
        change_sha256=v.change_sha,
        change_nbytes=v.change_nbytes,
        parent_id=v.parent_id,
        contributions=list(v.contributions),
        val_loss=v.val_loss,
        created_at=v.created_at,
        merge_id=v.merge_id,
    )


def round_metrics(r: RoundRecord) -> RoundMetrics:
    return RoundMetrics(
        number=r.number,
        status="closed" if r.closed_at is not None else "closing" if r.closing_at is not None else "open",
        base_version_id=r.base_version_id,
        version_id=r.version_id,
        val_loss=r.val_loss,
        train_loss=r.train_loss,
        accepted=r.accepted,
        clipped=r.clipped,
        rejected=r.rejected,
        tokens=r.tokens,
        bytes_in=r.bytes_in,
        bytes_out=r.bytes_out,
        wall_s=None if r.closed_at is None else r.closed_at - r.started_at,
        close_reason=r.close_reason,
        failures=r.failures or 0,
        error=r.error,
    )
