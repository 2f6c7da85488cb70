"""The one place a version is committed: the run's open round closes on it and the run moves on
(to its next round, or finished after its last, and a modular run with its last module).
Rounds (a round's aggregate) and merges (modules merged into one) both commit through here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from tessera.blobs import BlobStore
from tessera.hub import queries
from tessera.hub.modules import modules_of
from tessera.hub.tables import Run, Version, new_id, new_round


@dataclass(frozen=True)
class NewVersion:
    """What a version is made of: its safetensors blob (and the change from its parent in the
    run's download codec), its held-out loss, and where it came from."""

    blob: bytes
    val_loss: float
    change: bytes | None = None
    contributions: Sequence[str] = ()  # the contributions it aggregates
    merge_id: str | None = None  # the merge that made it


def commit_version(
    s: Session,
    store: BlobStore,
    run: Run,
    parent: Version,
    new: NewVersion,
    reason: str,
    now: float,
    rounds: int,
) -> Version:
    """Version ``parent.number + 1`` of ``run``, in the caller's transaction (which holds the
    run's locks). An active run's open round closes on it for ``reason`` (quorum, deadline,
    merge); the run finishes once ``rounds`` rounds are done, else its next round opens."""
    version = Version(
        id=new_id(),
        run_id=run.id,
        number=parent.number + 1,
        blob_sha=store.put(new.blob),
        nbytes=len(new.blob),
        change_sha=store.put(new.change) if new.change is not None else None,
        change_nbytes=len(new.change) if new.change is not None else None,
        parent_id=parent.id,
        contributions=list(new.contributions),
        val_loss=new.val_loss,
        created_at=now,
        merge_id=new.merge_id,
    )
    s.add(version)
    s.flush()
    if run.status == "active":
        record = queries.round_(s, run.id, run.current_round)
        record.closed_at, record.close_reason, record.version_id = now, reason, version.id
        record.val_loss = new.val_loss
    run.current_round = version.number
    if run.status == "active" and run.current_round >= rounds:
        run.status, run.finished_at = "finished", now
        finish_parent(s, run, now)
    elif run.status == "active":
        s.add(new_round(run.id, run.current_round, version.id, now))
    return version


def finish_parent(s: Session, module: Run, now: float) -> None:
    """A modular run finishes with the last of its modules."""
    if module.parent_id is None:
        return
    parent = queries.run(s, module.parent_id, lock=True)
    if all(r.status == "finished" for r in modules_of(s, parent).values()):
        parent.status, parent.finished_at = "finished", now
