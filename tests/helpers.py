"""Helpers shared by the tests (not a test module, no fixtures): recipes, a fake clock,
the PostgreSQL test database, a factory module that leaves marker files, and the steps of a
worker spelled out against a hub client. Processes and threads of a cluster come from
``tessera.testing.cluster``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, insert, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.schema import CreateTable
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.api.messages import ContributionMeta, LeaseGrant
from tessera.core.tensors import from_bytes
from tessera.hub.tables import SCHEMA_VERSION, Base, Meta
from tessera.trust import Trust


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def tiny_recipe(
    data_path: Path,
    rounds: int = 3,
    quorum: int = 2,
    inner_steps: int = 3,
    extra_run: str = "",
    extra: str = "",
) -> str:
    return f"""
[run]
name = "tiny"
rounds = {rounds}
quorum = {quorum}
max_staleness = 1
{extra_run}

[model]
options = {{ context = 16, d_model = 16, n_layers = 1, n_heads = 2 }}

[data]
path = "{data_path}"
options = {{ context = 16, num_shards = 2 }}

[train]
inner_steps = {inner_steps}
batch_size = 4
lr = 0.01

[eval]
batch_size = 4
batches = 2
{extra}
"""


def dataset_recipe(
    weights: dict[str, float], use: str = "research", quorum: int = 2, inner_steps: int = 3
) -> str:
    """A tiny model's recipe on dataset versions of the commons (id -> mixing weight)."""
    table = ", ".join(f"{i} = {w}" for i, w in weights.items())
    return f"""
[run]
name = "commons"
rounds = 3
quorum = {quorum}
use = "{use}"

[model]
options = {{ context = 16, d_model = 16, n_layers = 1, n_heads = 2 }}

[data]
datasets = {{ {table} }}
options = {{ context = 16, num_shards = 2 }}

[train]
inner_steps = {inner_steps}
batch_size = 4
lr = 0.01

[eval]
batch_size = 4
batches = 2
"""


def reading(folder: Path) -> Trust:
    """What a test's hub and workers trust: tessera's own factories, and recipes reading ``folder``."""
    return Trust.of(data_roots=[folder])


POSTGRES_URL = os.environ.get("TESSERA_TEST_DATABASE_URL")
REQUIRE_POSTGRES = os.environ.get("TESSERA_REQUIRE_POSTGRES") == "1"


def schema_fingerprint(engine: Engine) -> str:
    """A hash of the DDL this checkout's tables compile to on ``engine``'s dialect: two checkouts
    of the same schema version whose column types differ get different fingerprints."""
    ddl = "\n".join(str(CreateTable(t).compile(engine)) for t in Base.metadata.sorted_tables)
    return hashlib.sha256(ddl.encode()).hexdigest()


def fresh_postgres(url: str) -> str:
    """Empty the test database so each test starts from nothing: its tables emptied when they
    were made by this checkout's schema (fast; known by a fingerprint of their DDL kept in
    ``tessera_meta``), else dropped and made again (a test, or an older checkout on a reused
    database server, may have left other tables behind)."""
    engine = create_engine(url)
    tables = [t.name for t in Base.metadata.sorted_tables]
    fingerprint = schema_fingerprint(engine)
    with engine.begin() as conn:
        current = (
            set(inspect(conn).get_table_names()) == set(tables)
            and conn.execute(text("SELECT value FROM tessera_meta WHERE key = 'test_schema'")).scalar()
            == fingerprint
        )
        if current:
            emptied = ", ".join(t for t in tables if t != "tessera_meta")
            conn.execute(text(f"TRUNCATE {emptied} RESTART IDENTITY CASCADE"))
            conn.execute(text("DELETE FROM tessera_meta WHERE key NOT IN ('schema_version', 'test_schema')"))
    if not current:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                insert(Meta),
                [
                    {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                    {"key": "test_schema", "value": fingerprint},
                ],
            )
    engine.dispose()
    return url


def postgres_url() -> str:
    """An emptied PostgreSQL test database; skipped locally without one, failed in CI."""
    if POSTGRES_URL is None:
        if REQUIRE_POSTGRES:
            pytest.fail(
                "TESSERA_REQUIRE_POSTGRES=1 but TESSERA_TEST_DATABASE_URL is unset; run .ci/postgres.sh"
            )
        pytest.skip("PostgreSQL: set TESSERA_TEST_DATABASE_URL (bash .ci/postgres.sh prints one)")
    return fresh_postgres(POSTGRES_URL)


def join(http: TestClient, admin: HubClient, run_id: str, name: str) -> tuple[HubClient, str]:
    """A new provider (made by the admin) with a worker registered in the run."""
    token = admin.create_provider(f"{run_id[:8]}-{name}").token
    client = HubClient(http, token, retry_s=0.0, run_id=run_id)
    return client, client.register(name).worker_id


def zero_update(client: HubClient, grant: LeaseGrant) -> dict[str, torch.Tensor]:
    params = from_bytes(client.blob(grant.blob_sha256))
    return {k: torch.full_like(v, 0.01) for k, v in params.items() if v.is_floating_point()}


def meta(grant: LeaseGrant, worker_id: str, tokens: int = 64, cid: str | None = None) -> ContributionMeta:
    return ContributionMeta(
        contribution_id=cid or grant.lease_id,
        lease_id=grant.lease_id,
        worker_id=worker_id,
        tokens=tokens,
        steps=3,
        train_loss=4.0,
        compute_s=0.1,
    )


def work(client: HubClient, worker_id: str) -> LeaseGrant:
    reply = client.lease(worker_id)
    assert reply.status == "work" and reply.lease is not None
    return reply.lease


def modular_recipe(data: Path, owner: str | None = None) -> str:
    owner_line = f'owner = "{owner}"' if owner else ""
    return f"""
[run]
name = "modular"
rounds = 2
quorum = 2

[model]
factory = "tessera.models.modular:build"
options = {{ experts = ["alpha", "beta"], context = 16, d_model = 16, n_layers = 1, n_heads = 2 }}

[data]
path = "{data}"
options = {{ context = 16, domains = ["alpha", "beta"] }}

[train]
inner_steps = 3
batch_size = 4
lr = 0.01

[eval]
batch_size = 4
batches = 2

[modules.trunk]
params = ["tok.*", "pos.*", "ln_f.*", "head.*",
          "blocks.*.ln1.*", "blocks.*.attn.*", "blocks.*.ln2.*", "blocks.*.mlp.*"]
model_options = {{ experts = [] }}

[modules.alpha]
params = ["blocks.*.experts.alpha.*"]
depends = ["trunk"]
shards = ["alpha"]
quorum = 1
inner_steps = 6
model_options = {{ experts = ["alpha"] }}
{owner_line}

[modules.beta]
params = ["blocks.*.experts.beta.*"]
depends = ["trunk"]
shards = ["beta"]
quorum = 1
inner_steps = 6
model_options = {{ experts = ["beta"] }}
"""


GENERAL = """
[modules.general]
params = ["blocks.*.experts.general.*"]
depends = ["trunk"]
rounds = 1
model_options = { experts = ["general"] }
"""


FACTORY_MODULE = """
import os, pathlib
MARKS = pathlib.Path(os.environ["TESSERA_TEST_MARKS"])
(MARKS / f"{__name__}-imported-{os.getpid()}").touch()

def build(context: int = 16):
    (MARKS / f"{__name__}-called-{os.getpid()}").touch()
    from tessera.models.lm import build as lm
    return lm(context=context, d_model=16, n_layers=1, n_heads=2)
"""


def write_factory_module(folder: Path, name: str) -> Path:
    """A module ``name`` in ``folder`` that leaves marker files in ``folder/marks``: NAME-imported-PID
    when imported, NAME-called-PID when its ``build`` is called."""
    (folder / f"{name}.py").write_text(FACTORY_MODULE)
    marks = folder / "marks"
    marks.mkdir(exist_ok=True)
    return marks
