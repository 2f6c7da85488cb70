"""Lineage queries: the derivation graph of dataset versions, walked in the database by
recursive queries (SQLite and PostgreSQL alike), so a withdrawal reaches every descendant in one
statement however deep the graph; and a run version's lineage: the dataset versions it trained
on (with their ancestors), the tokens taken from each and whose compute, read from the ledger's
credits (each names the dataset its lease trained on), and the lineage of the version a forked
run started from."""

from __future__ import annotations

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from tessera.api.commons import ComputeShare, DatasetUse, RunLineage
from tessera.hub import access
from tessera.hub.auth import Principal, may_read
from tessera.hub.tables import (
    Dataset,
    DatasetInput,
    LedgerEntry,
    Provider,
    Run,
    RunDataset,
    Version,
)


def descendants(s: Session, dataset_id: str) -> list[str]:
    """Every dataset version derived from ``dataset_id``, directly or through others."""
    below = (
        select(DatasetInput.dataset_id)
        .where(DatasetInput.input_id == dataset_id)
        .cte("below", recursive=True)
    )
    below = below.union(
        select(DatasetInput.dataset_id).join(below, DatasetInput.input_id == below.c.dataset_id)
    )
    return sorted(s.scalars(select(below.c.dataset_id)))


def ancestors(s: Session, dataset_ids: list[str]) -> list[str]:
    """Every dataset version the given ones were derived from, directly or through others."""
    if not dataset_ids:
        return []
    above = (
        select(DatasetInput.input_id)
        .where(DatasetInput.dataset_id.in_(dataset_ids))
        .cte("above", recursive=True)
    )
    above = above.union(
        select(DatasetInput.input_id).join(above, DatasetInput.dataset_id == above.c.input_id)
    )
    return sorted(s.scalars(select(above.c.input_id)))


def compute_of(s: Session, run_id: str, number: int) -> list[ComputeShare]:
    """Whose compute trained the run's versions up to ``number``, on which dataset version: the
    ledger's credits (less what was taken back) of the contributions in those versions, each
    recording the dataset its lease trained on."""
    signed = case((LedgerEntry.kind == "correction", -LedgerEntry.tokens), else_=LedgerEntry.tokens)
    rows = s.execute(
        select(LedgerEntry.dataset_id, Provider.name, func.sum(signed), func.sum(LedgerEntry.amount))
        .select_from(LedgerEntry)
        .join(Version, Version.id == LedgerEntry.version_id)
        .join(Provider, Provider.id == LedgerEntry.provider_id)
        .where(
            LedgerEntry.run_id == run_id,
            LedgerEntry.kind.in_(("compute", "correction")),
            Version.run_id == run_id,
            Version.number <= number,
        )
        .group_by(LedgerEntry.dataset_id, Provider.name)
    ).all()
    shares = [
        ComputeShare(provider=p, dataset_id=d, tokens=int(t or 0), pflop=float(a or 0.0))
        for d, p, t, a in rows
    ]
    return sorted(shares, key=lambda c: (-c.tokens, c.provider, c.dataset_id or ""))


def dataset_use(s: Session, who: Principal, d: Dataset, weight: float | None, tokens: int) -> DatasetUse:
    """A dataset version as ``who`` may see it in a lineage: to one who may not read it, only its
    id, licence, visibility, the tokens taken from it and whether it is withdrawn (derived from
    withdrawn data counting as withdrawn), not its name, owner or derivation."""
    shown = access.decide(s, who, d).granted
    owner = s.get(Provider, d.owner_id) if shown else None
    inputs = s.scalars(
        select(DatasetInput.input_id).where(DatasetInput.dataset_id == d.id).order_by(DatasetInput.position)
    )
    withdrawn = d.withdrawn_at is not None
    return DatasetUse(
        dataset_id=d.id,
        name=d.name if shown else None,
        owner=owner.name if owner else None,
        licence=d.licence,
        visibility=d.visibility,
        weight=weight,
        tokens=tokens,
        derived_from=list(inputs) if shown else [],
        transform=d.transform if shown else None,
        withdrawn=withdrawn if shown else withdrawn or bool(d.tainted_by),
        tainted_by=list(d.tainted_by) if shown else [],
    )


def version_lineage(s: Session, who: Principal, run: Run, version: Version) -> RunLineage:
    """The lineage of one of the run's versions (read by whoever may read the run)."""
    compute = compute_of(s, run.id, version.number)
    tokens: dict[str | None, int] = {}
    for c in compute:
        tokens[c.dataset_id] = tokens.get(c.dataset_id, 0) + c.tokens
    used = named_by(s, run)
    if run.module is not None:  # a module: the versions it trained on, of those its run names
        used = [(u, d) for u, d in used if tokens.get(d.id)]
    datasets = [dataset_use(s, who, d, u.weight, tokens.get(d.id, 0)) for u, d in used]
    above = [a for a in ancestors(s, [d.id for _, d in used]) if a not in {d.id for _, d in used}]
    datasets += [
        dataset_use(s, who, d, None, 0) for d in s.scalars(select(Dataset).where(Dataset.id.in_(above)))
    ]
    fork = s.get(Version, run.forked_from) if run.forked_from else None
    parent = s.get(Run, fork.run_id) if fork else None
    hidden = None  # the fork point of a run the reader may not read: its id and version only
    if parent is not None and fork is not None and not may_read(who, parent.owner_id, parent.collective_id):
        hidden = RunLineage(
            run_id=parent.id,
            name="(a run you may not read)",
            version=fork.number,
            version_id=fork.id,
            forked_from=None,
            datasets=[],
            compute=[],
            marks=[],
        )
        parent, fork = None, None
    return RunLineage(
        run_id=run.id,
        name=run.name,
        version=version.number,
        version_id=version.id,
        forked_from=version_lineage(s, who, parent, fork)
        if parent is not None and fork is not None
        else hidden,
        datasets=datasets,
        compute=compute,
        marks=marks_of(datasets) + only_withdrawn(run, datasets),
    )


def named_by(s: Session, run: Run) -> list[tuple[RunDataset, Dataset]]:
    """The dataset versions a run names (a module: its modular run), in the recipe's order."""
    rows = s.execute(
        select(RunDataset, Dataset)
        .join(Dataset, Dataset.id == RunDataset.dataset_id)
        .where(RunDataset.run_id == (run.parent_id or run.id))
        .order_by(RunDataset.position)
    ).all()
    return [(u, d) for u, d in rows]


def only_withdrawn(run: Run, datasets: list[DatasetUse]) -> list[str]:
    """For a module all of whose training data was withdrawn: how to leave it out."""
    trained = [d for d in datasets if d.weight is not None and d.tokens]
    if run.module is None or not trained or not all(d.withdrawn or d.tainted_by for d in trained):
        return []
    return [
        f"module {run.module} trained only on withdrawn data: leave it out of samples and exports "
        "with --expert, naming the experts to keep"
    ]


def fork_chain(s: Session, run: Run) -> list[Run]:
    """The runs a forked run descends from, nearest first."""
    chain, seen = [], {run.id}
    while run.forked_from is not None:
        version = s.get(Version, run.forked_from)
        parent = s.get(Run, version.run_id) if version is not None else None
        if parent is None or parent.id in seen:
            break
        chain.append(parent)
        seen.add(parent.id)
        run = parent
    return chain


def run_marks(s: Session, who: Principal, run: Run) -> list[str]:
    """The withdrawn dataset versions (or versions derived from withdrawn data) the run names (a
    module: those it trained on)."""
    marked = [(u, d) for u, d in named_by(s, run) if d.withdrawn_at is not None or d.tainted_by]
    if run.module is not None and marked:
        trained = set(
            s.scalars(select(LedgerEntry.dataset_id).where(LedgerEntry.run_id == run.id).distinct())
        )
        marked = [(u, d) for u, d in marked if d.id in trained]
    inherited = [
        f"forked from run {parent.id[:8]}, which trains on data since withdrawn ({d.id[:16]})"
        for parent in fork_chain(s, run)
        for _, d in named_by(s, parent)
        if d.withdrawn_at is not None or d.tainted_by
    ]
    return marks_of([dataset_use(s, who, d, u.weight, 0) for u, d in marked], with_tokens=False) + inherited


def marks_of(datasets: list[DatasetUse], with_tokens: bool = True) -> list[str]:
    """What a reader must know of the data a version was trained on: withdrawn versions."""
    marks = []
    for d in datasets:
        if d.weight is None or not (d.withdrawn or d.tainted_by):
            continue
        label = f"{d.name or 'a private dataset'} ({d.dataset_id[:16]})"
        why = "since withdrawn by its owner" if d.withdrawn else "derived from data since withdrawn"
        marks.append(f"trains on {label}, {why}" + (f": {d.tokens} tokens of it" if with_tokens else ""))
    return marks
