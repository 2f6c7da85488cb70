"""Lineage queries: the derivation graph of dataset versions, walked in the database by
recursive queries (SQLite and PostgreSQL alike), so a withdrawal reaches every descendant in one
statement however deep the graph."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.hub.tables import DatasetInput


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
