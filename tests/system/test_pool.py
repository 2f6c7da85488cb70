"""The pool through real processes: a `tessera hub`, two owners' three runs, and six
`tessera worker` processes started without a run (one of them outside its window). The runs
finish, workers move from run to run, the windowed worker never trains, and the ledger's
credits and debits balance exactly; `tessera queue` and `tessera pledge` run against the hub."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tessera.api.client import HubClient
from tessera.api.messages import Balance
from tessera.hub.ledger import PFLOP
from tessera.hub.state import State
from tessera.hub.tables import Contribution, Lease, LedgerEntry, Provider, Run, Version, Worker
from tessera.testing.cluster import (
    ROOT,
    free_port,
    start_hub,
    start_worker,
    stop,
    tessera_command,
    wait_until,
)
from tests.helpers import tiny_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ROUNDS = {"alice-1": 2, "alice-2": 8, "bob-1": 10}  # the workers of the short run move to the others
WORKERS = 3  # pool workers each run can use ([run] workers): 9 wanted of the 5 that may work


def closed_window(now: datetime) -> str:
    """A one-hour window that opens three hours after ``now`` ("HH:MM-HH:MM UTC")."""
    opens = now.astimezone(UTC) + timedelta(hours=3)
    return f"{opens:%H:%M}-{opens + timedelta(hours=1):%H:%M} UTC"


def tessera(*args: str) -> subprocess.Popen[str]:
    """`tessera ... --json`, started."""
    return subprocess.Popen(
        tessera_command(*args, "--json"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=dict(os.environ, COLUMNS="120"),
    )  # fmt: skip


def printed(command: subprocess.Popen[str]) -> Any:
    """The JSON the command printed (it must succeed)."""
    out, err = command.communicate(timeout=90)
    assert command.returncode == 0, out + err
    return json.loads(out)


class Pool:
    """The hub process and the pool worker processes of the test, with their logs."""

    def __init__(self, home: Path, corpus: Path) -> None:
        self.home, self.reads = home, ("--data-root", str(corpus))
        self.url, self.admin = "", ""
        self.hub: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_hub(self) -> None:
        port = free_port()
        self.hub = start_hub(self.home / "hub", port, *self.reads, log=self.home / "hub.log")
        self.url = f"http://127.0.0.1:{port}"
        self.admin = (self.home / "hub" / "admin.token").read_text().strip()

    def hub_as(self, token: str) -> tuple[str, ...]:
        return ("--hub", self.url, "--token", token)

    def start(self, name: str, token: str, *options: str) -> None:
        self.workers[name] = start_worker(
            (self.url, token), self.home / name, *self.reads, "--progress-every", "60", *options, name=name
        )

    def log(self, name: str) -> str:
        return (self.home / name / "worker.log").read_text(errors="replace")

    def alive(self) -> bool:
        """True while every worker runs (a pool worker never exits by itself); else RuntimeError."""
        for name, proc in self.workers.items():
            if proc.poll() is not None:
                raise RuntimeError(f"pool worker {name} exited with {proc.returncode}:\n{self.log(name)}")
        return True

    def stop(self) -> None:
        stop([*self.workers.values(), *([self.hub] if self.hub else [])])


def test_pool_workers_share_three_runs_of_two_owners(tmp_path: Path, corpus_dir: Path) -> None:
    pool = Pool(tmp_path, corpus_dir)
    try:
        pool.start_hub()
        with HubClient.connect(pool.url, pool.admin) as admin:
            tokens = {n: admin.create_provider(n).token for n in ("alice", "bob", "carol")}
            runs = create_runs(pool.url, tokens, corpus_dir)
            pledging = tessera(
                "pledge", "create", "--to", "pool", "--steps", "100000", *pool.hub_as(tokens["carol"])
            )
            pool.start("night", tokens["bob"], "--window", closed_window(datetime.now(UTC)), "--kind", "gpu")
            pledge = check_pledge(printed(pledging))
            waiting = lambda: pool.alive() and "outside its windows" in pool.log("night")  # noqa: E731
            wait_until(waiting, 90, "the windowed worker's first answer from the pool")
            check_queue_before_work(printed(tessera("queue", *pool.hub_as(pool.admin))), runs)
            for i, provider in enumerate(["carol", "carol", "carol", "bob", "bob"]):
                pool.start(f"w{i}", tokens[provider])
            finished = lambda: pool.alive() and all(admin.status(r).status == "finished" for r in runs)  # noqa: E731
            wait_until(finished, 150, "the end of the three runs", every_s=0.5)
            members = {m.name: m.member_id for m in admin.pool_members()}
            balances = {b.name: b for b in admin.ledger().providers}
        stop(list(pool.workers.values()))
        pledges = printed(tessera("pledge", "list", *pool.hub_as(tokens["carol"])))
    finally:
        pool.stop()
    assert set(members) == {"night", *(f"w{i}" for i in range(5))}
    check_window_respected(pool.log("night"))
    db = Record.read(tmp_path / "hub" / "hub.sqlite")
    check_runs_finished(db, runs)
    check_workers_moved(db, members)
    check_ledger(db, balances)
    carol = {w.id for w in db.workers if w.provider_id == db.providers["carol"]}
    steps = sum(c.steps for c in db.committed() if c.worker_id in carol)
    assert [(p["pledge_id"], p["status"], p["delivered_steps"]) for p in pledges] == [
        (pledge, "active", steps)
    ]
    assert steps > 0  # the budget pledge counts the steps of carol's committed contributions


def create_runs(url: str, tokens: dict[str, str], corpus: Path) -> dict[str, str]:
    """Alice's two runs and Bob's one, by id: the run's name."""
    runs = {}
    for name, rounds in ROUNDS.items():
        owner = name.split("-")[0]
        recipe = tiny_recipe(corpus, rounds=rounds, quorum=1, inner_steps=20)
        recipe = recipe.replace('name = "tiny"', f'name = "{name}"\nworkers = {WORKERS}')
        with HubClient.connect(url, tokens[owner]) as client:
            runs[client.create_run(recipe).run_id] = name
    return runs


def check_pledge(info: dict[str, Any]) -> str:
    """Carol's budget of inner steps to the whole pool (more than the runs take): its id."""
    assert info["kind"] == "budget" and info["target"] == "pool" and info["steps"] == 100000
    assert info["provider"] == "carol" and info["status"] == "active" and info["delivered_steps"] == 0
    return str(info["pledge_id"])


def check_queue_before_work(queue: dict[str, Any], runs: dict[str, str]) -> None:
    """Every run waits for its workers; the windowed worker, waiting, is not one of the pool's."""
    assert queue["pool_workers"] == 0
    assert {e["run_id"]: e["name"] for e in queue["runs"]} == runs
    for e in queue["runs"]:
        assert e["owner"] == e["account"] == e["name"].split("-")[0]
        assert e["workers"] == 0 and e["demand"] == WORKERS and e["score"] == 0.0
        assert e["reason"].startswith(f"waits for {WORKERS} more workers: {e['owner']}'s balance is +0.0")


@dataclass
class Record:
    """What the hub's database holds once the hub has stopped."""

    providers: dict[str, str]  # name: id
    owners: dict[str, str]  # run id: its owner's id
    versions: list[Version]
    contributions: list[Contribution]
    workers: list[Worker]
    leases: list[Lease]
    ledger: list[LedgerEntry]

    @classmethod
    def read(cls, path: Path) -> Record:
        state = State(f"sqlite:///{path}")
        try:
            with state.transaction() as s:
                return cls(
                    providers={p.name: p.id for p in s.scalars(select(Provider))},
                    owners={r.id: r.owner_id for r in s.scalars(select(Run))},
                    versions=list(s.scalars(select(Version).order_by(Version.number))),
                    contributions=list(s.scalars(select(Contribution))),
                    workers=list(s.scalars(select(Worker))),
                    leases=list(s.scalars(select(Lease))),
                    ledger=list(s.scalars(select(LedgerEntry))),
                )
        finally:
            state.close()

    def committed(self) -> list[Contribution]:
        """The contributions the runs' versions include."""
        ids = {(v.run_id, cid) for v in self.versions for cid in v.contributions}
        return [c for c in self.contributions if (c.run_id, c.id) in ids]


def check_window_respected(log: str) -> None:
    """The windowed worker was told to wait hours, until its window opens, and never worked."""
    waits = [
        float(s)
        for s in re.findall(r"outside its windows; they open in [\d.]+ h; asking again in (\d+) s", log)
    ]
    assert waits and all(2.9 * 3600 < s <= 3 * 3600 for s in waits), log
    assert "working on run" not in log and "contribution" not in log, log


def check_runs_finished(db: Record, runs: dict[str, str]) -> None:
    """Each run has the versions of all its rounds, each made of accepted contributions."""
    for run_id, name in runs.items():
        numbers = [v.number for v in db.versions if v.run_id == run_id]
        assert numbers == list(range(ROUNDS[name] + 1)), (name, numbers)
    committed = db.committed()
    assert len(committed) == len({(c.run_id, c.id) for c in committed})  # each in one version
    assert all(c.status == "accepted" for c in committed)


def check_workers_moved(db: Record, members: dict[str, str]) -> None:
    """A pool worker contributed to two runs or more; the windowed one never leased."""
    run_of = {w.id: w.run_id for w in db.workers}
    served: dict[str | None, set[str]] = defaultdict(set)
    for c in db.committed():
        member = next(w.member_id for w in db.workers if w.id == c.worker_id)
        served[member].add(run_of[c.worker_id])
    assert set(served) <= {members[f"w{i}"] for i in range(5)}, served  # all work came from the pool
    assert max(len(r) for r in served.values()) >= 2, served
    night = [w.id for w in db.workers if w.member_id == members["night"]]
    assert night == [] and not any(lease.worker_id in night for lease in db.leases)


def check_ledger(db: Record, balances: dict[str, Balance]) -> None:
    """Per committed contribution, one credit to its worker's provider and the same amount debited
    to the run's owner, and nothing else; GET /v1/ledger's balances are their sums."""
    provider_of = {w.id: w.provider_id for w in db.workers}
    expected = sorted(
        (kind, c.run_id, c.id, provider, c.tokens)
        for c in db.committed()
        for kind, provider in (("compute", provider_of[c.worker_id]), ("usage", db.owners[c.run_id]))
    )
    entries = sorted((e.kind, e.run_id, e.contribution_id, e.provider_id, e.tokens) for e in db.ledger)
    missing, extra = set(expected) - set(entries), set(entries) - set(expected)
    assert entries == expected, f"committed, not in the ledger: {missing}; in it, not committed: {extra}"
    for e in db.ledger:  # bit for bit: tokens x FLOPs per token, credited and debited
        assert e.amount == (1 if e.kind == "compute" else -1) * e.tokens * e.flops_per_token / PFLOP
    credits = [e for e in db.ledger if e.kind == "compute"]
    assert sum(e.amount for e in credits) == pytest.approx(
        -sum(e.amount for e in db.ledger if e.kind == "usage")
    )
    for name in ("alice", "bob", "carol"):
        provider_id = db.providers[name]
        earned = [e.amount for e in credits if e.provider_id == provider_id]
        on_its_runs = [e.amount for e in credits if db.owners[e.run_id] == provider_id]
        assert balances[name].pflop == pytest.approx(sum(earned))
        assert balances[name].used_pflop == pytest.approx(sum(on_its_runs))
    assert balances["alice"].pflop == 0 and balances["carol"].used_pflop == 0
    assert balances["alice"].used_pflop > 0 and balances["bob"].used_pflop > 0 and balances["carol"].pflop > 0
