"""The commons' registry at scale, on PostgreSQL: 10,000 dataset versions and 1,000,000 lease
records (each with its contribution and ledger credit), then

- the lineage of a module's version ("which datasets and whose compute trained it"), through the
  hub's own query, timed (median of 5);
- a withdrawal of a version with 1,000 derived descendants (a random derivation tree), through
  the hub's own service, timed, every descendant checked marked; then 20 lease requests on a
  real run that trained on it, counting those that were still given leases on it;
- a dataset's id hashed at two paths (the standard library's ``json`` package, copied), compared.

The bulk rows go in with PostgreSQL's COPY; everything measured goes through tessera's code.

    .venv/bin/python bench/commons.py --json bench/results/commons.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tessera.blobs import FileBlobStore  # noqa: E402
from tessera.data.datasets import merkle_root, read_manifest  # noqa: E402
from tessera.data.text import stdlib_root  # noqa: E402
from tessera.errors import Forbidden  # noqa: E402
from tessera.hub.config import HubConfig  # noqa: E402
from tessera.hub.service import HubService  # noqa: E402
from tessera.hub.state import State  # noqa: E402
from tessera.hub.tables import Base, Dataset, new_id  # noqa: E402
from tessera.testing.corpus import write_corpus  # noqa: E402
from tessera.testing.inprocess import InProcessClient  # noqa: E402
from tessera.trust import Trust  # noqa: E402
from tessera.worker.datasets import Terms, request_for  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://tessera:tessera@127.0.0.1:5432/tessera_bench"


def fresh_database(url: str) -> None:
    """An empty database at ``url`` (created, or its tables dropped)."""
    base, name = url.rsplit("/", 1)
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if c.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar() is None:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    with engine.begin() as c:
        c.execute(text("DROP TABLE IF EXISTS tessera_meta"))
    engine.dispose()


def copy_rows(state: State, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """``rows`` into ``table`` with COPY (tab-separated; None as \\N)."""
    buffer = io.StringIO()
    for row in rows:
        buffer.write("\t".join("\\N" if v is None else str(v) for v in row) + "\n")
    raw = state.engine.raw_connection()
    try:
        cursor = raw.cursor()
        quoted = ", ".join(f'"{c}"' for c in columns)
        with cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            copy.write(buffer.getvalue())
        raw.commit()
    finally:
        raw.close()


RECIPE = """
[run]
name = "{name}"
rounds = 1000
quorum = 1000

[model]
options = {{ context = 16, d_model = 16, n_layers = 1, n_heads = 2 }}

[data]
datasets = {{ {datasets} }}
options = {{ context = 16, num_shards = 2 }}

[train]
inner_steps = 1
batch_size = 4
"""


class Registry:
    """The hub, its providers, a real dataset version and a real run on it, and the bulk rows."""

    def __init__(self, url: str, home: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.service = HubService(State(url), FileBlobStore(home / "blobs"), config=HubConfig(trust=Trust()))
        self.state = self.service.state
        providers = self.service.providers
        admin = providers.principal(providers.bootstrap_admin() or "")
        self.owner_token = providers.create_provider(admin, "owner", "person", False).token
        self.owner = providers.principal(self.owner_token)
        self.providers = [
            providers.create_provider(admin, f"p{i}", "person", False).provider.provider_id
            for i in range(args.providers)
        ]
        self.rng = random.Random(0)
        self.root = self.real_dataset(write_corpus(home / "corpus"))

    def real_dataset(self, folder: Path) -> str:
        """A public version of ``folder``'s files, registered and uploaded through the hub."""
        files = read_manifest(folder)
        info = self.service.datasets.add(self.owner, request_for(Terms("root", "CC-BY-4.0", "public"), files))
        for f in files:
            self.service.datasets.put_file(
                self.owner, info.dataset_id, f.sha256, (folder / f.path).read_bytes()
            )
        return info.dataset_id

    def dataset_rows(self) -> list[str]:
        """``datasets`` versions: the real one, 1,000 derived from it (a random tree), the rest alone."""
        ids = [f"{self.rng.getrandbits(256):064x}" for _ in range(self.args.datasets - 1)]
        now = time.time()
        rows, edges = [], []
        tree = [self.root]
        for n, dataset_id in enumerate(ids):
            derived = n < self.args.descendants
            rows.append(
                (
                    dataset_id,
                    self.owner.provider_id,
                    f"d{n}",
                    1,
                    "CC-BY-4.0",
                    "",
                    "public",
                    "true",
                    "ready",
                    1,
                    100,
                    "[]",
                    "filter" if derived else None,
                    "{}" if derived else None,
                    "bench" if derived else None,
                    "true",
                    "[]",
                    now,
                )
            )
            if derived:
                edges.append((dataset_id, self.rng.choice(tree), 0))
                tree.append(dataset_id)
        columns = [
            "id",
            "owner_id",
            "name",
            "number",
            "licence",
            "description",
            "visibility",
            "stored",
            "state",
            "file_count",
            "nbytes",
            "files",
            "transform",
            "params",
            "code_version",
            "deterministic",
            "tainted_by",
            "created_at",
        ]
        copy_rows(self.state, "datasets", columns, rows)
        copy_rows(self.state, "dataset_inputs", ["dataset_id", "input_id", "position"], edges)
        return ids

    def runs(self, ids: list[str]) -> list[tuple[str, list[str], list[str]]]:
        """Runs (made through the hub, on the real version) with their versions, each also
        naming 20 bulk versions it trains on: (run id, version ids, dataset ids)."""
        made = []
        for r in range(self.args.runs):
            run_id = self.service.create_run(
                self.owner, RECIPE.format(name=f"run{r}", datasets=f"{self.root} = 1.0")
            ).run_id
            mine = self.rng.sample(ids, 20)
            copy_rows(
                self.state,
                "run_datasets",
                ["run_id", "dataset_id", "weight", "position", "steps_issued"],
                [(run_id, d, 1.0, i + 1, 0) for i, d in enumerate(mine)],
            )
            version_ids = [new_id() for _ in range(self.args.versions)]
            copy_rows(
                self.state,
                "versions",
                ["id", "run_id", "number", "blob_sha", "nbytes", "contributions", "created_at"],
                [(v, run_id, n + 1, "0" * 64, 0, "[]", 0.0) for n, v in enumerate(version_ids)],
            )
            made.append((run_id, version_ids, mine))
        return made

    def leases(self, runs: list[tuple[str, list[str], list[str]]]) -> int:
        """``lease_records`` leases, each with a worker's accepted contribution and its credit."""
        workers = {}
        for run_id, _, _ in runs:
            workers[run_id] = [(new_id(), p) for p in self.providers]
            copy_rows(
                self.state,
                "workers",
                [
                    "id",
                    "run_id",
                    "provider_id",
                    "name",
                    "index",
                    "ranks",
                    "verified",
                    "held_datasets",
                    "registered_at",
                    "last_seen_at",
                ],
                [(w, run_id, p, "w", i, 1, 0, "[]", 0.0, 0.0) for i, (w, p) in enumerate(workers[run_id])],
            )
        per_run = self.args.lease_records // len(runs)
        for run_id, version_ids, mine in runs:
            leases, contributions, ledger = [], [], []
            for n in range(per_run):
                lease_id, (worker_id, provider_id) = new_id(), self.rng.choice(workers[run_id])
                number = n * len(version_ids) // per_run
                dataset_id = self.rng.choice(mine)
                leases.append(
                    (
                        lease_id,
                        run_id,
                        worker_id,
                        number,
                        version_ids[number - 1] if number else "v0",
                        1,
                        0.0,
                        1.0,
                        "used",
                        dataset_id,
                        f"{dataset_id[:12]}-0",
                    )
                )
                contributions.append(
                    (
                        lease_id,
                        run_id,
                        worker_id,
                        lease_id,
                        number,
                        number,
                        0,
                        64,
                        1,
                        0.0,
                        1.0,
                        1.0,
                        64.0,
                        "accepted",
                        0.0,
                        "false",
                    )
                )
                ledger.append(
                    (
                        provider_id,
                        run_id,
                        lease_id,
                        version_ids[number],
                        "compute",
                        64,
                        1e6,
                        6.4e-8,
                        0.0,
                        dataset_id,
                    )
                )
            copy_rows(
                self.state,
                "leases",
                [
                    "id",
                    "run_id",
                    "worker_id",
                    "round",
                    "version_id",
                    "inner_steps",
                    "issued_at",
                    "deadline",
                    "state",
                    "dataset_id",
                    "shard",
                ],
                leases,
            )
            copy_rows(
                self.state,
                "contributions",
                [
                    "id",
                    "run_id",
                    "worker_id",
                    "lease_id",
                    "round",
                    "base_version_number",
                    "nbytes",
                    "tokens",
                    "steps",
                    "compute_s",
                    "train_loss",
                    "norm",
                    "weight",
                    "status",
                    "created_at",
                    "own_data",
                ],
                contributions,
            )
            copy_rows(
                self.state,
                "ledger",
                [
                    "provider_id",
                    "run_id",
                    "contribution_id",
                    "version_id",
                    "kind",
                    "tokens",
                    "flops_per_token",
                    "amount",
                    "created_at",
                    "dataset_id",
                ],
                ledger,
            )
        with self.state.engine.begin() as c:
            c.execute(text("ANALYZE"))
        return per_run * len(runs)


def timed_lineage(registry: Registry, run_id: str, number: int) -> tuple[float, dict[str, Any]]:
    times, found = [], None
    for _ in range(5):
        start = time.perf_counter()
        found = registry.service.reads.lineage(run_id, registry.owner, number)
        times.append(time.perf_counter() - start)
    assert found is not None
    tokens = sum(c.tokens for c in found.compute)
    return statistics.median(times), {
        "datasets": len(found.datasets),
        "providers": len({c.provider for c in found.compute}),
        "tokens": tokens,
        "times_s": times,
    }


def optout(registry: Registry, run_id: str) -> dict[str, Any]:
    """Withdraw the real version with its descendants; then 20 lease requests on the run."""
    service = registry.service
    client = InProcessClient(service, registry.owner_token, run_id)
    before = client.register("before").worker_id
    assert client.lease(before).lease is not None  # it trained on the version before
    start = time.perf_counter()
    reply = service.datasets.withdraw(registry.owner, registry.root, "bench")
    elapsed = time.perf_counter() - start
    with service.state.reading() as s:
        marked = [d for d in s.scalars(select(Dataset.tainted_by)) if registry.root in d]
    issued = 0
    for n in range(20):
        worker_id = client.register(f"after-{n}").worker_id
        try:
            grant = client.lease(worker_id).lease
        except Forbidden:
            continue
        issued += grant is not None and grant.dataset_id == registry.root
    return {
        "optout_mark_s": elapsed,
        "descendants_marked": len(marked),
        "reply_marked": reply.descendants_marked,
        "leases_after_optout": issued,
        "lease_requests_after": 20,
    }


def reproducible_id() -> dict[str, Any]:
    """The id of the standard library's ``json`` package, hashed where it is and as a copy."""
    source = stdlib_root() / "json"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "elsewhere" / "json-copy"
        shutil.copytree(source, copy)
        here, there = read_manifest(source), read_manifest(copy)
    same = merkle_root(here) == merkle_root(there)
    return {
        "id_here": merkle_root(here),
        "id_there": merkle_root(there),
        "id_reproducible": same,
        "files": len(here),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default=os.environ.get("TESSERA_BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--datasets", type=int, default=10_000)
    parser.add_argument("--descendants", type=int, default=1_000)
    parser.add_argument("--lease-records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=8)  # a provider's most active runs (limits)
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--providers", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    fresh_database(args.database)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        registry = Registry(args.database, Path(home), args)
        ids = registry.dataset_rows()
        runs = registry.runs(ids)
        leases = registry.leases(runs)
        loaded_s = time.perf_counter() - started
        run_id, _, _ = runs[0]
        lineage_s, lineage = timed_lineage(registry, run_id, args.versions // 2)
        opted = optout(registry, run_id)
        registry.state.close()
    result = {
        "datasets": args.datasets,
        "lease_records": leases,
        "lineage_query_s": lineage_s,
        "lineage": lineage,
        "descendants": args.descendants,
        **opted,
        **reproducible_id(),
        "load_s": loaded_s,
        "targets": {"lineage_query_s": "< 1", "optout_mark_s": "< 60", "leases_after_optout": 0},
        "met": lineage_s < 1 and opted["optout_mark_s"] < 60 and opted["leases_after_optout"] == 0,
        "command": "python bench/commons.py " + " ".join(sys.argv[1:]),
    }
    text_out = json.dumps(result, indent=2)
    print(text_out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text_out + "\n")


if __name__ == "__main__":
    main()
