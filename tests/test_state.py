import sqlite3
from pathlib import Path

import pytest

from tessera.errors import ConfigError
from tessera.hub.state import Meta, State


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
