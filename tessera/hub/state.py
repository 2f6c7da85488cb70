"""The hub's database through SQLAlchemy (a SQLite file by default, PostgreSQL in production):
the engine, its transactions, and the schema (created in an empty database, upgraded in place in
an older one, refused in a foreign one). The tables are in ``tessera.hub.tables``.

The hub keeps no state outside this database and the blob store, so a restarted hub resumes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from tessera.errors import ConfigError
from tessera.hub.tables import SCHEMA_VERSION, Base, Meta

# Upgrades of older databases in place, one schema version at a time: added columns (SQLite and
# PostgreSQL alike), and ("postgresql", statement) for PostgreSQL alone (SQLite's INTEGER is
# 64 bits already).
BIGINT_COLUMNS = {
    "contributions": ("tokens", "nbytes"),
    "rounds": ("tokens", "bytes_in", "bytes_out"),
    "ledger": ("tokens",),
    "versions": ("nbytes", "change_nbytes"),
}
MIGRATIONS: dict[str, list[str | tuple[str, str]]] = {
    "4": [
        "ALTER TABLE versions ADD COLUMN change_sha VARCHAR(64)",
        "ALTER TABLE versions ADD COLUMN change_nbytes INTEGER",
        "ALTER TABLE contributions ADD COLUMN compute_s FLOAT DEFAULT 0.0",
    ],
    "5": [
        "ALTER TABLE runs ADD COLUMN parent_id VARCHAR(32)",
        "ALTER TABLE runs ADD COLUMN module VARCHAR(64)",
        "CREATE INDEX ix_runs_parent_id ON runs (parent_id)",
        "ALTER TABLE versions ADD COLUMN merge_id VARCHAR(32)",
    ],
    "6": [
        "ALTER TABLE runs ADD COLUMN model_bytes BIGINT DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN error TEXT",
        "ALTER TABLE runs ADD COLUMN error_at FLOAT",
        "ALTER TABLE workers ADD COLUMN ranks INTEGER DEFAULT 1",
        "ALTER TABLE rounds ADD COLUMN failures INTEGER DEFAULT 0",
        "ALTER TABLE rounds ADD COLUMN error TEXT",
        *(
            ("postgresql", f"ALTER TABLE {table} ALTER COLUMN {column} TYPE BIGINT")
            for table, columns in BIGINT_COLUMNS.items()
            for column in columns
        ),
    ],
    "7": ["ALTER TABLE rounds ADD COLUMN closing_at FLOAT"],
    "8": [],  # the adapters table, new: create_all makes it
    "9": [  # and the pool's tables, new
        "ALTER TABLE workers ADD COLUMN member_id VARCHAR(32)",
        "ALTER TABLE leases ADD COLUMN pledge_id VARCHAR(32)",
        "ALTER TABLE leases ADD COLUMN stop_at FLOAT",
        "ALTER TABLE runs ADD COLUMN paused BOOLEAN DEFAULT FALSE",
        "ALTER TABLE workers ADD COLUMN verified INTEGER DEFAULT 0",
        "ALTER TABLE workers ADD COLUMN flagged_at FLOAT",
        "ALTER TABLE workers ADD COLUMN flag_reason TEXT",
        "ALTER TABLE contributions ADD COLUMN own_data BOOLEAN DEFAULT FALSE",
        "ALTER TABLE contributions ADD COLUMN verified VARCHAR(16)",
        "CREATE INDEX ix_contributions_verified ON contributions (verified)",
    ],
    "10": [  # and the commons' tables and runs' events, new: create_all makes them
        "ALTER TABLE leases ADD COLUMN dataset_id VARCHAR(64)",
        "ALTER TABLE leases ADD COLUMN shard VARCHAR(200)",
        "ALTER TABLE workers ADD COLUMN held_datasets JSON DEFAULT '[]'",
        "ALTER TABLE runs ADD COLUMN forked_from VARCHAR(32)",
        "ALTER TABLE ledger ADD COLUMN dataset_id VARCHAR(64)",
    ],
}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def private_file(path: Path, create: bool = True) -> None:
    """``path`` readable and writable by this user only (created empty if missing and ``create``)."""
    if create and not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    if path.exists():
        path.chmod(0o600)


class State:
    """Owns the engine; hands out transactions. ``url`` is any SQLAlchemy database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, **self._engine_options(url))
        database = self.engine.url.database
        sqlite_file = url.startswith("sqlite") and database not in (None, "", ":memory:")
        if sqlite_file:
            private_file(Path(str(database)))
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self.engine, autoflush=False)
        self._turn: contextlib.AbstractContextManager[object] = (
            threading.RLock() if url.startswith("sqlite") else contextlib.nullcontext()
        )
        self._create_or_check_schema()
        if sqlite_file:  # the write-ahead log and its index hold the same data
            for suffix in ("-wal", "-shm"):
                private_file(Path(f"{database}{suffix}"), create=False)

    def _create_or_check_schema(self) -> None:
        """Create the tables in an empty database; refuse one written by another schema."""
        existing = set(inspect(self.engine).get_table_names())
        if existing and "tessera_meta" not in existing:
            found = (
                "an unversioned tessera schema"
                if "runs" in existing
                else f"other tables {sorted(existing)[:5]}"
            )
            raise ConfigError(f"database {self.engine.url!r} holds {found}; use a new --home or --database")
        Base.metadata.create_all(self.engine)
        with self.transaction() as s:
            row = s.get(Meta, "schema_version")
            if row is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            while row.value in MIGRATIONS:
                for step in MIGRATIONS[row.value]:
                    dialect, statement = step if isinstance(step, tuple) else (None, step)
                    if dialect in (None, self.engine.dialect.name):
                        s.execute(text(statement))
                row.value = str(int(row.value) + 1)
            if row.value != str(SCHEMA_VERSION):
                raise ConfigError(
                    f"database {self.engine.url!r} has tessera schema {row.value}, this version needs "
                    f"{SCHEMA_VERSION}; use a new --home or --database (or an older tessera to read it)"
                )

    @staticmethod
    def _engine_options(url: str) -> dict[str, Any]:
        if url.startswith("sqlite"):
            return {"connect_args": {"check_same_thread": False, "timeout": 30}}
        return {"pool_pre_ping": True}

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose changes commit together at the end, or not at all. On SQLite, which
        lets one writer in at a time, this process's transactions take turns on one lock instead
        of polling the database's (its busy handler sleeps); callers keep them short: no tensor
        work inside."""
        with self._turn, self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for lookups only: it commits nothing (a change made in it is dropped), and on
        SQLite it does not wait for the writers' turn (the write-ahead log lets readers in beside
        the one writer). What it returns stays readable after it ends."""
        with self._readers() as session:  # closing it ends its transaction, keeping loaded rows
            yield session

    def close(self) -> None:
        self.engine.dispose()
