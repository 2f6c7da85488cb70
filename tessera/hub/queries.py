"""The hub's SQL lookups: each reads rows in the caller's transaction and changes nothing.

A lookup that names one thing (a run, a worker, a version, a round) raises ``NotFound`` with what
to do when it does not exist; ``run(..., lock=True)`` also takes the run's row lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from tessera.errors import Forbidden, NotFound
from tessera.hub.auth import Principal
from tessera.hub.tables import Contribution, Lease, Membership, Provider, RoundRecord, Run, Version, Worker


def run(s: Session, run_id: str, lock: bool = False) -> Run:
    """The run; ``lock`` takes its row lock (SELECT ... FOR UPDATE) until the transaction ends,
    which serializes changes to one run across hub processes sharing a database."""
    # with_for_update=None (not False) lets a run read already in this session come from it
    found = s.get(Run, run_id, with_for_update=True if lock else None, populate_existing=lock)
    if found is None:
        raise NotFound(f"run {run_id} not found; `tessera status` lists the runs of a hub")
    return found


def worker(s: Session, run_id: str, worker_id: str, who: Principal) -> Worker:
    """The run's worker ``worker_id``, which must be ``who``'s."""
    found = s.get(Worker, worker_id)
    if found is None or found.run_id != run_id:
        raise NotFound(f"worker {worker_id} is not registered in run {run_id}; register first")
    if found.provider_id != who.provider_id:
        raise Forbidden(f"worker {worker_id} belongs to another provider; register your own")
    return found


def version(s: Session, run_id: str, number: int) -> Version:
    found = s.scalar(select(Version).where(Version.run_id == run_id, Version.number == number))
    if found is None:
        raise NotFound(f"run {run_id} has no version {number}")
    return found


def version_by_id(s: Session, version_id: str) -> Version:
    found = s.get(Version, version_id)
    if found is None:
        raise NotFound(f"version {version_id} not found")
    return found


def latest_version(s: Session, run_id: str) -> Version:
    found = s.scalar(select(Version).where(Version.run_id == run_id).order_by(Version.number.desc()).limit(1))
    if found is None:
        raise NotFound(f"run {run_id} has no version")
    return found


def round_(s: Session, run_id: str, number: int) -> RoundRecord:
    found = s.scalar(select(RoundRecord).where(RoundRecord.run_id == run_id, RoundRecord.number == number))
    if found is None:
        raise NotFound(f"run {run_id} has no round {number}")
    return found


def rounds(s: Session, run_id: str) -> Sequence[RoundRecord]:
    return s.scalars(
        select(RoundRecord).where(RoundRecord.run_id == run_id).order_by(RoundRecord.number)
    ).all()


def counted(s: Session, run_id: str, number: int) -> Sequence[Contribution]:
    """The contributions counted in round ``number`` so far (accepted, or pending its close)."""
    return s.scalars(
        select(Contribution)
        .where(
            Contribution.run_id == run_id,
            Contribution.round == number,
            Contribution.status.in_(("accepted", "pending")),
        )
        .order_by(Contribution.pk)
    ).all()


def contribution(s: Session, run_id: str, contribution_id: str) -> Contribution | None:
    return s.scalar(
        select(Contribution).where(Contribution.run_id == run_id, Contribution.id == contribution_id)
    )


def contributions(s: Session, run_id: str, round_number: int | None = None) -> Sequence[Contribution]:
    query = select(Contribution).where(Contribution.run_id == run_id)
    if round_number is not None:
        query = query.where(Contribution.round == round_number)
    return s.scalars(query.order_by(Contribution.pk)).all()


def recent_norms(s: Session, run_id: str, since_round: int) -> Sequence[float]:
    """Norms of the contributions counted from round ``since_round`` on (the norm bound's history)."""
    return s.scalars(
        select(Contribution.norm).where(
            Contribution.run_id == run_id,
            Contribution.status.in_(("accepted", "pending")),
            Contribution.round >= since_round,
        )
    ).all()


def step_times(s: Session, run_id: str, since_round: int) -> dict[str, float]:
    """Seconds per inner step of each worker, from its latest contribution since ``since_round``."""
    rows = s.execute(
        select(Contribution.worker_id, Contribution.compute_s, Contribution.steps)
        .where(Contribution.run_id == run_id, Contribution.round >= since_round, Contribution.compute_s > 0)
        .order_by(Contribution.pk)
    ).all()
    return {worker_id: compute_s / steps for worker_id, compute_s, steps in rows}


def active_workers(s: Session, run_id: str, round_number: int, now: float) -> int:
    """The run's active workers at round ``round_number`` (a fractional quorum's base): the
    distinct workers issued a lease in it or in the round before, or holding an open lease that
    has not expired (still training on an older version, when leases outlast rounds), but not
    those whose lease stopped at the end of their window, nor, after round 0, those none of whose
    uploads has arrived yet (a joining worker's first lease is a whole download and training:
    the round need not wait for it)."""
    in_flight = (Lease.state == "open") & (Lease.deadline > now)
    query = select(func.count(func.distinct(Lease.worker_id))).where(
        Lease.run_id == run_id,
        Lease.round.in_((round_number - 1, round_number)) | in_flight,
        Lease.stop_at.is_(None) | (Lease.stop_at > now),
    )
    if round_number > 0:
        delivered = aliased(Lease)  # one of the worker's leases that an upload used
        query = query.where(exists().where(delivered.worker_id == Lease.worker_id, delivered.state == "used"))
    return s.scalar(query) or 0


def arrival_times(
    s: Session, run_id: str, since_round: int, before_round: int, full_steps: int
) -> Sequence[float]:
    """Seconds from the start of each closed round from ``since_round`` to before ``before_round``
    to the arrival of each of its accepted contributions that was trained on the round's own
    version (stale work, a straggler of the round before, says nothing of how long this round's
    work takes), arrived after the round (re)started, and did all its lease's steps, of a lease
    of the recipe's ``full_steps`` where a window bounded it (work cut or sized short by a
    window's end arrives early and says nothing of a whole lease's time either)."""
    waited = Contribution.created_at - RoundRecord.started_at
    return s.scalars(
        select(waited)
        .join(
            RoundRecord,
            (RoundRecord.run_id == Contribution.run_id) & (RoundRecord.number == Contribution.round),
        )
        .join(Lease, Lease.id == Contribution.lease_id)
        .where(
            Contribution.run_id == run_id,
            Contribution.round >= since_round,
            Contribution.round < before_round,
            Contribution.status == "accepted",
            Contribution.base_version_number == Contribution.round,
            RoundRecord.closed_at.is_not(None),
            waited >= 0,
            Contribution.steps >= Lease.inner_steps,
            Lease.stop_at.is_(None) | (Lease.inner_steps >= full_steps),
        )
    ).all()


def worker_leases(s: Session, worker_id: str, round_number: int) -> Sequence[Lease]:
    return s.scalars(select(Lease).where(Lease.worker_id == worker_id, Lease.round == round_number)).all()


def workers(s: Session, run_id: str) -> int:
    return s.scalar(select(func.count()).select_from(Worker).where(Worker.run_id == run_id)) or 0


def provider_ranks(s: Session, run_id: str, provider_id: str) -> int:
    """The ranks of the provider's workers in the run (a torchrun worker counts once per rank)."""
    mine = (Worker.run_id == run_id, Worker.provider_id == provider_id)
    return s.scalar(select(func.coalesce(func.sum(Worker.ranks), 0)).where(*mine)) or 0


def active_runs_of(s: Session, provider_id: str) -> tuple[int, int]:
    """(count, model bytes) of the provider's active runs (a modular run counts once)."""
    active = (Run.owner_id == provider_id, Run.status == "active", Run.parent_id.is_(None))
    count, total = s.execute(
        select(func.count(), func.coalesce(func.sum(Run.model_bytes), 0)).where(*active)
    ).one()
    return int(count), int(total)


def runs_with_rounds(s: Session) -> Sequence[str]:
    """Active runs that have rounds of their own (a modular run's rounds are its modules')."""
    parents = select(Run.parent_id).where(Run.parent_id.is_not(None))
    return s.scalars(select(Run.id).where(Run.status == "active", Run.id.not_in(parents))).all()


def top_level_runs(s: Session) -> Sequence[Run]:
    """Runs that are not a module of another, oldest first."""
    return s.scalars(select(Run).where(Run.parent_id.is_(None)).order_by(Run.created_at)).all()


def owns_blob(s: Session, run_id: str, sha: str) -> bool:
    """Whether ``sha`` is one of the run's versions or version changes."""
    found = s.scalar(
        select(func.count())
        .select_from(Version)
        .where(Version.run_id == run_id, or_(Version.blob_sha == sha, Version.change_sha == sha))
    )
    return bool(found)


def provider_named(s: Session, name_or_id: str) -> Provider | None:
    """The provider with this id, else the one with this name."""
    return s.get(Provider, name_or_id) or s.scalar(select(Provider).where(Provider.name == name_or_id))


def collectives_of(s: Session, provider_id: str) -> list[str]:
    """The ids of the collectives a provider is a member of, sorted."""
    return sorted(s.scalars(select(Membership.collective_id).where(Membership.member_id == provider_id)))
