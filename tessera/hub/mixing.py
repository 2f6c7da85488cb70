"""Which dataset version, and which of its shards, a dataset run's new lease trains on.

A worker may train on a version that is not withdrawn (nor derived from withdrawn data) and
that its provider may read, or, for a private version, that its provider owns and the worker
holds (it said so at registering, having hashed its copy). Among those, the lease goes to the
version furthest behind its mixing weight (inner steps leased on it over its weight; the recipe's
order breaks ties), so the steps trained on each follow the weights; the shard is the worker's
by its index, so a worker keeps training (and caching) the same files.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tessera.data.mixture import private_shard, shard_prefix
from tessera.errors import Forbidden
from tessera.hub import access
from tessera.hub.tables import Dataset, Provider, RunDataset, Worker


def open_to(s: Session, worker: Worker, d: Dataset) -> str | None:
    """Why ``worker`` may not train on ``d`` now, or None if it may."""
    if d.withdrawn_at is not None or d.tainted_by:
        return f"{d.id[:16]} was withdrawn (or derives from withdrawn data)"
    if not d.stored:
        if d.owner_id != worker.provider_id or d.id not in (worker.held_datasets or []):
            return f"{d.id[:16]} is private: only its owner's workers that hold it train on it"
        return None
    provider = s.get(Provider, worker.provider_id)
    assert provider is not None
    decision = access.decide(s, access.principal_of(s, provider), d)
    return None if decision.granted else f"{d.id[:16]}: {decision.reason}"


def choose(s: Session, run_id: str, worker: Worker, shards: list[str], steps: int) -> tuple[str, str]:
    """The (dataset version, shard) of the worker's new lease of ``steps`` inner steps, counted
    against that version's weight, among the versions ``shards`` (the run's, or its module's)
    cover; ``run_id``: the run that names the versions (a module's: its modular run). Forbidden,
    with each version's reason, if none is open to the worker."""
    rows = s.execute(
        select(RunDataset, Dataset)
        .join(Dataset, Dataset.id == RunDataset.dataset_id)
        .where(RunDataset.run_id == run_id)
        .order_by(RunDataset.position)
    ).all()
    known = {name.rsplit("-", 1)[0] for name in shards}  # the versions the run's data source has
    open_, reasons = [], []
    for use, d in rows:
        if shard_prefix(d.id) not in known:
            continue
        why = open_to(s, worker, d)
        if why is None:
            open_.append((use, d))
        else:
            reasons.append(why)
    if not open_:
        raise Forbidden(f"no dataset of this run is open to your worker: {'; '.join(reasons)}")
    use, d = min(open_, key=lambda pair: pair[0].steps_issued / pair[0].weight)
    s.execute(  # an increment in the database: modules' leases on one run do not lose each other's
        update(RunDataset)
        .where(RunDataset.run_id == use.run_id, RunDataset.dataset_id == use.dataset_id)
        .values(steps_issued=RunDataset.steps_issued + steps)
    )
    if not d.stored:
        return d.id, private_shard(d.id)
    mine = [name for name in shards if name.startswith(shard_prefix(d.id) + "-")]
    return d.id, mine[worker.index % len(mine)]
