import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from tessera.errors import ConfigError
from tessera.hub.state import BIGINT_COLUMNS, State
from tessera.hub.tables import SCHEMA_VERSION, Meta


def test_schema_is_created_then_reused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    State(url).close()
    State(url).close()  # a second open of the same schema is fine


def test_foreign_or_older_databases_are_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("create table runs (id text)")
    with pytest.raises(ConfigError, match="unversioned tessera schema"):
        State(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert tables == {"runs"}


def test_schema_version_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    state = State(url)
    with state.transaction() as s:
        row = s.get(Meta, "schema_version")
        assert row is not None
        row.value = "1"
    state.close()
    with pytest.raises(ConfigError, match="tessera schema 1"):
        State(url)


def test_schema_4_is_upgraded_in_place(database_url: str) -> None:
    """A hub database of an older schema gains the new columns, step by step, and keeps its rows."""
    state = State(database_url)
    with state.transaction() as s:
        s.execute(text("DROP INDEX ix_runs_parent_id"))
        s.execute(text("DROP INDEX ix_contributions_verified"))
        dropped = (
            ("versions", "change_sha"),
            ("versions", "change_nbytes"),
            ("contributions", "compute_s"),
            ("runs", "parent_id"),
            ("runs", "module"),
            ("versions", "merge_id"),
            ("runs", "model_bytes"),
            ("runs", "error"),
            ("runs", "error_at"),
            ("workers", "ranks"),
            ("rounds", "failures"),
            ("rounds", "error"),
            ("rounds", "closing_at"),
            ("workers", "member_id"),
            ("leases", "pledge_id"),
            ("leases", "stop_at"),
            ("runs", "paused"),
            ("workers", "verified"),
            ("workers", "flagged_at"),
            ("workers", "flag_reason"),
            ("contributions", "own_data"),
            ("contributions", "verified"),
            ("leases", "dataset_id"),
            ("leases", "shard"),
            ("workers", "held_datasets"),
            ("runs", "forked_from"),
            ("ledger", "dataset_id"),
        )
        for table, column in dropped:
            s.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        if state.engine.dialect.name == "postgresql":  # schema 6 kept tokens and sizes in INTEGER
            for table, columns in BIGINT_COLUMNS.items():
                for column in columns:
                    if (table, column) not in dropped:
                        s.execute(text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE INTEGER"))
        row = s.get(Meta, "schema_version")
        assert row is not None
        row.value = "4"
        s.add(Meta(key="kept", value="yes"))
        s.execute(text("DELETE FROM tessera_meta WHERE key = 'test_schema'"))  # altered by hand
    state.close()
    upgraded = State(database_url)
    with upgraded.transaction() as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)  # type: ignore[union-attr]
        assert s.get(Meta, "kept") is not None
        assert s.execute(text("SELECT change_sha, change_nbytes FROM versions")).all() == []
        assert s.execute(text("SELECT compute_s FROM contributions")).all() == []
        assert s.execute(text("SELECT parent_id, module FROM runs")).all() == []
        assert s.execute(text("SELECT merge_id FROM versions")).all() == []
        assert s.execute(text("SELECT model_bytes, error, error_at FROM runs")).all() == []
        assert s.execute(text("SELECT ranks FROM workers")).all() == []
        assert s.execute(text("SELECT failures, error, closing_at FROM rounds")).all() == []
        assert s.execute(text("SELECT member_id FROM workers")).all() == []
        assert s.execute(text("SELECT pledge_id, stop_at FROM leases")).all() == []
        assert s.execute(text("SELECT paused FROM runs")).all() == []
        assert s.execute(text("SELECT verified, flagged_at, flag_reason FROM workers")).all() == []
        assert s.execute(text("SELECT own_data, verified FROM contributions")).all() == []
        assert s.execute(text("SELECT dataset_id, shard FROM leases")).all() == []
        assert s.execute(text("SELECT held_datasets FROM workers")).all() == []
        assert s.execute(text("SELECT forked_from FROM runs")).all() == []
        assert s.execute(text("SELECT dataset_id FROM ledger")).all() == []
        if upgraded.engine.dialect.name == "postgresql":
            kinds = s.execute(
                text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = 'ledger' AND column_name = 'tokens'"
                )
            ).scalar()
            assert kinds == "bigint"
    upgraded.close()
