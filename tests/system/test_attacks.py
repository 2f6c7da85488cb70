"""Attacks by an ordinary provider (not an admin, in no collective) on a real hub process.

Each test is one finding of the security review: the attack is refused with a clear answer,
and the hub's state is as it was (or, for a round that cannot close, the failure is recorded
and the hub and the run go on). Limits are set low in the hub's configuration file so that
reaching them is cheap.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from tessera.api.client import HubClient
from tessera.api.messages import ContributionMeta, LeaseGrant
from tessera.api.protocol import META_HEADER
from tessera.core.tensors import from_bytes, to_bytes
from tessera.testing.cluster import ROOT, free_port, start_hub, wait_until
from tests.helpers import tiny_recipe, write_factory_module

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
LIMITS = """
[limits]
max_active_runs = 3
max_workers = 4
max_waiting_leases = 50
max_probe_bytes_per_hour = 33554432

[verify]  # the attacks here are on the API: a replay would catch their junk updates mid-test
fraction = 0.0
trust_after = 0
"""


@dataclass
class Hub:
    url: str
    home: Path
    marks: Path
    procs: list[subprocess.Popen[bytes]]  # the one hub process (a restart replaces it)
    admin: HubClient
    restart: Callable[[], None]
    clients: list[HubClient]

    def http(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def provider(self, name: str) -> HubClient:
        """A client of a new provider, closed with the hub."""
        self.clients.append(HubClient.connect(self.url, self.admin.create_provider(name).token, retry_s=0))
        return self.clients[-1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Iterator[Hub]:
    """A hub trusting one factory module of the test's (``trusted_factory:build``, which leaves
    marker files) and reading the test corpus, with low limits; shared by this module's tests,
    each attacking as a provider of its own."""
    tmp_path = tmp_path_factory.mktemp("attacked")
    code = tmp_path / "code"
    code.mkdir()
    marks = write_factory_module(code, "trusted_factory")
    write_factory_module(code, "untrusted_factory")
    config = tmp_path / "hub.toml"
    config.write_text(LIMITS)
    home, port = tmp_path / "hub", free_port()
    env = {"PYTHONPATH": str(code), "TESSERA_TEST_MARKS": str(marks)}
    options = ("--config", str(config), "--trust", "trusted_factory:build", "--data-root", str(corpus_dir))
    database = f"sqlite:///{home / 'hub.sqlite'}"
    url = f"http://127.0.0.1:{port}"
    procs = [start_hub(home, port, *options, database_url=database, env=env)]

    def restart() -> None:
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        procs[0] = start_hub(home, port, *options, database_url=database, env=env)

    admin = HubClient.connect(url, (home / "admin.token").read_text().strip(), retry_s=0)
    hub = Hub(url, home, marks, procs, admin, restart, [admin])
    try:
        yield hub
    finally:
        for client in hub.clients:
            client.close()
        procs[0].terminate()
        procs[0].wait(timeout=30)


@pytest.fixture
def attacker(hub: Hub, request: pytest.FixtureRequest) -> HubClient:
    """An ordinary provider of its own: not an admin, in no collective."""
    return hub.provider(f"mallory-{request.node.name[:40]}")


def lease(client: HubClient, run_id: str, name: str) -> tuple[str, LeaseGrant]:
    client.select_run(run_id)
    worker_id = client.register(name).worker_id
    grant = client.lease(worker_id).lease
    assert grant is not None
    return worker_id, grant


def update(client: HubClient, grant: LeaseGrant, value: float = 0.01) -> dict[str, torch.Tensor]:
    params = from_bytes(client.blob(grant.blob_sha256))
    return {k: torch.full_like(v, value) for k, v in params.items() if v.is_floating_point()}


def meta(grant: LeaseGrant, worker_id: str, **claims: object) -> dict[str, object]:
    """The contribution's metadata; by default an honest claim (3 steps of batch 4 x 16 targets)."""
    fields = {"contribution_id": grant.lease_id, "lease_id": grant.lease_id, "worker_id": worker_id}
    return {**fields, "tokens": 192, "steps": 3, "train_loss": 4.0, "compute_s": 0.1, **claims}


def upload(hub: Hub, token: str, run_id: str, body: bytes, claims: dict[str, object]) -> httpx.Response:
    with hub.http(token) as http:
        return http.post(
            f"/v1/runs/{run_id}/contributions", content=body, headers={META_HEADER: json.dumps(claims)}
        )


def hostile_recipes(marks: Path) -> list[str]:
    ran = marks / "ran"
    model = '[run]\nname = "x"\n[model]\nfactory = "{}"\noptions = {}\n'
    return [
        model.format("os:system", f'{{ command = "touch {ran}" }}'),
        model.format("subprocess:run", f'{{ args = ["touch", "{ran}"] }}'),
        model.format("builtins:exec", f"{{ source = \"open('{ran}', 'w')\" }}"),
        model.format("untrusted_factory:build", "{}"),
        '[run]\nname = "x"\n[model]\n[data]\nsource = "builtins:eval"\n'
        f"path = \"__import__('os').system('touch {ran}')\"\n",
        '[run]\nname = "x"\n[model]\n[data]\nsource = "untrusted_factory:build"\n',
    ]


def test_recipes_naming_untrusted_code_run_nothing(hub: Hub, attacker: HubClient) -> None:
    runs = len(hub.admin.runs())
    for text in hostile_recipes(hub.marks):
        with hub.http(attacker.token) as http:
            answer = http.post("/v1/runs", content=text.encode())
        assert answer.status_code == 400 and "not trusted on this machine" in answer.json()["detail"], (
            answer.text
        )
    lab = hub.admin.create_provider("lab", kind="collective")  # mallory is not in it
    with hub.http(attacker.token) as http:
        foreign = http.post("/v1/runs", content=b'[run]\nname = "x"\ncollective = "lab"\n[model]\n')
    assert foreign.status_code == 403 and "not a member of the collective lab" in foreign.json()["detail"]
    hub.restart()  # nothing was stored that a restarted hub could run
    assert len(hub.admin.runs()) == runs and not list(hub.marks.glob("untrusted_factory-*"))
    assert not (hub.marks / "ran").exists()
    assert lab.provider.name == "lab"


def test_a_worker_refuses_a_run_whose_code_it_does_not_trust(
    hub: Hub, attacker: HubClient, corpus_dir: Path
) -> None:
    recipe = tiny_recipe(corpus_dir).replace("[model]\n", '[model]\nfactory = "trusted_factory:build"\n')
    recipe = recipe.replace("options = { context = 16, d_model = 16, n_layers = 1, n_heads = 2 }", "")
    run_id = hub.admin.create_run(recipe).run_id  # the hub's admin trusts it: the hub ran it
    before = set(hub.marks.iterdir())
    assert hub.marks / f"trusted_factory-called-{hub.procs[0].pid}" in before
    token = attacker.token or ""
    base = [sys.executable, "-m", "tessera", "worker", "--hub", hub.url, "--token", token, "--run", run_id]
    env = {**os.environ, "PYTHONPATH": str(hub.marks.parent), "TESSERA_TEST_MARKS": str(hub.marks)}

    def worker(*options: str) -> subprocess.CompletedProcess[str]:
        cmd = [*base, "--data-root", str(corpus_dir), *options]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    shown = worker("--dry-run")
    assert shown.returncode == 1 and "trusted_factory:build (not trusted here)" in shown.stdout, shown.stdout
    refused = worker("--state-dir", str(hub.home.parent / "w"))
    assert refused.returncode == 1 and "not trusted on this machine" in refused.stderr, refused.stderr
    assert set(hub.marks.iterdir()) == before  # the worker imported nothing
    assert hub.admin.status(run_id).workers == 0  # and it did not join
    allowed = worker("--dry-run", "--trust", "trusted_factory:build")
    assert allowed.returncode == 0 and "allowed by this machine's configuration" in allowed.stdout


def test_a_flattened_upload_is_aggregated_as_it_was_checked(
    hub: Hub, attacker: HubClient, corpus_dir: Path
) -> None:
    run_id = hub.admin.create_run(tiny_recipe(corpus_dir, rounds=2, quorum=2)).run_id
    attacker_worker, attacker_grant = lease(attacker, run_id, "flat")
    flat = {k: v.reshape(-1) for k, v in update(attacker, attacker_grant).items()}
    answer = upload(hub, attacker.token or "", run_id, to_bytes(flat), meta(attacker_grant, attacker_worker))
    assert answer.status_code == 200 and answer.json()["status"] == "accepted"
    honest = hub.provider("honest")
    honest_worker, honest_grant = lease(honest, run_id, "honest")
    honest.submit(typed_meta(honest_grant, honest_worker), to_bytes(update(honest, honest_grant)))  # quorum
    wait_until(lambda: hub.admin.status(run_id).rounds_done == 1, 60, "round 0's close")  # after the reply
    status = hub.admin.status(run_id)
    assert status.rounds_done == 1 and status.error is None
    first, second = (
        from_bytes(hub.admin.blob(hub.admin.version(run_id, n).blob_sha256, run_id)) for n in (0, 1)
    )
    assert {k: v.shape for k, v in first.items()} == {k: v.shape for k, v in second.items()}
    assert attacker.lease(attacker_worker).status == "work"  # the run goes on


def typed_meta(grant: LeaseGrant, worker_id: str) -> ContributionMeta:
    return ContributionMeta.model_validate(meta(grant, worker_id))


def test_a_round_that_cannot_close_is_recorded_and_the_hub_goes_on(hub: Hub, corpus_dir: Path) -> None:
    broken = hub.admin.create_run(tiny_recipe(corpus_dir, rounds=2, quorum=2)).run_id
    timed = tiny_recipe(corpus_dir, rounds=1, quorum=3, extra_run="round_deadline_s = 1")
    other = hub.admin.create_run(timed).run_id
    a, b, c = (hub.provider(n) for n in ("a", "b", "c"))
    c_worker, c_grant = lease(c, other, "c")
    c.submit(typed_meta(c_grant, c_worker), to_bytes(update(c, c_grant)))  # closes at its deadline
    a_worker, a_grant = lease(a, broken, "a")
    blobs = set((hub.home / "blobs").glob("*/*"))
    a.submit(typed_meta(a_grant, a_worker), to_bytes(update(a, a_grant, 0.02)))  # a blob of its own
    [stored] = set((hub.home / "blobs").glob("*/*")) - blobs  # the contribution, as the hub checked it
    stored.unlink()  # lost: the round cannot be aggregated
    b_worker, b_grant = lease(b, broken, "b")
    reply = b.submit(typed_meta(b_grant, b_worker), to_bytes(update(b, b_grant)))
    assert reply.status == "accepted"  # the uploader's request is not the one that fails
    wait_until(lambda: hub.admin.status(broken).error is not None, 60, "the failed close's record")
    status, [first] = hub.admin.status(broken), hub.admin.rounds(broken)
    assert status.error is not None and "round 0 could not close: NotFound" in status.error
    assert first.status == "open" and first.failures == 1 and first.accepted == 0 and first.rejected == 2
    reasons = [x.reason or "" for x in hub.admin.contributions(broken)]
    assert len(reasons) == 2 and all("could not close" in r and "lease again" in r for r in reasons)
    # the deadline ticker goes on
    wait_until(
        lambda: hub.admin.status(other).status == "finished", 60, "the other run's close at its deadline"
    )
    for client, worker_id in ((a, a_worker), (b, b_worker)):  # the failed round starts again
        grant = client.lease(worker_id).lease
        assert grant is not None and grant.round == 0
        client.submit(typed_meta(grant, worker_id), to_bytes(update(client, grant)))
    wait_until(lambda: hub.admin.status(broken).rounds_done == 1, 60, "round 0's close, at last")
    status = hub.admin.status(broken)
    assert status.rounds_done == 1 and status.error is None and hub.admin.rounds(broken)[0].failures == 1


CLAIMS = [
    ({"tokens": 193}, "claims 193 tokens; 3 steps of batch 4 x 16 targets per example x 1 ranks"),
    ({"tokens": 2**62}, "less than or equal to 9007199254740992"),
    ({"tokens": 2**63 - 1}, "less than or equal"),
    ({"tokens": 2**64}, "less than or equal"),
    ({"steps": 4}, "claims 4 inner steps"),
    ({"compute_s": 1e6}, "s of compute"),
    ({"compute_s": float("inf")}, "finite"),
]


def test_claims_beyond_the_lease_are_refused_and_leave_nothing(
    hub: Hub, attacker: HubClient, corpus_dir: Path
) -> None:
    """Each claim is refused and stores nothing; one that parses but exceeds its lease also
    catches its worker (an honest worker never claims beyond its lease): it leases no more."""
    run_id = hub.admin.create_run(tiny_recipe(corpus_dir, rounds=1, quorum=1)).run_id
    token = attacker.token or ""
    kept_id, kept = lease(attacker, run_id, "liar")  # for claims that never parse: it stays
    body = to_bytes(update(attacker, kept))
    for i, (claims, answer) in enumerate(CLAIMS):
        parses = "less than or equal" not in answer and "finite" not in answer
        worker_id, grant = lease(attacker, run_id, f"liar{i}") if parses else (kept_id, kept)
        refused = upload(hub, token, run_id, body, meta(grant, worker_id, **claims))
        assert refused.status_code == 422 and answer in refused.json()["detail"], refused.text
        with hub.http(token) as http:
            again = http.post(f"/v1/runs/{run_id}/leases", json={"worker_id": worker_id})
        assert again.status_code == (403 if parses else 200), again.text
    assert hub.admin.contributions(run_id) == [] and hub.admin.rounds(run_id)[0].accepted == 0
    name = attacker.whoami().name
    assert [b.pflop for b in hub.admin.ledger().providers if b.name == name] == [0.0]
    honest = upload(hub, token, run_id, body, meta(kept, kept_id))  # its lease still works
    assert honest.status_code == 200
    wait_until(lambda: hub.admin.status(run_id).status == "finished", 60, "the run's last close")
    [balance] = [b for b in hub.admin.ledger().providers if b.name == name]
    assert balance.tokens == 192 and balance.contributions == 1  # credited as claimed, once


def test_waiting_leases_hold_no_thread_and_are_capped(
    hub: Hub, attacker: HubClient, corpus_dir: Path
) -> None:
    """60 lease requests that wait: 50 (the provider's cap) wait on the event loop, more than the
    hub's 40 request threads, 10 are refused at once; other requests are answered meanwhile."""
    run_id = hub.admin.create_run(tiny_recipe(corpus_dir, rounds=2, quorum=2)).run_id
    worker_id, grant = lease(attacker, run_id, "waiter")
    attacker.submit(typed_meta(grant, worker_id), to_bytes(update(attacker, grant)))
    token = attacker.token or ""

    async def attack() -> tuple[list[httpx.Response], list[int], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=80)
        async with httpx.AsyncClient(base_url=hub.url, timeout=60, limits=limits) as http:
            auth = {"Authorization": f"Bearer {token}"}
            body = {"worker_id": worker_id, "wait_s": 30.0}
            path = f"/v1/runs/{run_id}/leases"
            pending = {asyncio.create_task(http.post(path, json=body, headers=auth)) for _ in range(60)}
            finished: set[asyncio.Task[httpx.Response]] = set()
            while len(finished) < 10:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                finished |= done
            others = [
                (await http.get("/v1/whoami", headers=auth)).status_code,
                (await http.get("/v1/whoami")).status_code,
                (await http.get("/v1/whoami", headers={"Authorization": "Bearer tsr_forged"})).status_code,
                (await http.get(f"/v1/runs/{run_id}", headers=auth)).status_code,
                sum(not t.done() for t in pending),  # still waiting after those answers
            ]
            await asyncio.to_thread(close_round, hub, run_id)  # the waiters wake and get work
            woken = await asyncio.gather(*pending)
            return [t.result() for t in finished], others, list(woken)

    refused, others, woken = asyncio.run(attack())
    assert [r.status_code for r in refused] == [429] * 10
    assert all(
        r.headers["retry-after"] == "1" and "max_waiting_leases" in r.json()["detail"] for r in refused
    )
    assert others == [200, 401, 401, 200, 50]  # answered while all 50 still waited
    assert len(woken) == 50 and all(r.status_code == 200 and r.json()["status"] == "work" for r in woken)


def close_round(hub: Hub, run_id: str) -> None:
    """A second provider's contribution: the round closes on quorum."""
    closer = hub.provider("closer")
    worker_id, grant = lease(closer, run_id, "closer")
    closer.submit(typed_meta(grant, worker_id), to_bytes(update(closer, grant)))


def test_junk_recipes_and_quotas_create_nothing(hub: Hub, attacker: HubClient, corpus_dir: Path) -> None:
    runs = len(hub.admin.runs())
    with hub.http(attacker.token) as http:
        empty = [http.post("/v1/runs", content=b"") for _ in range(100)]
        assert {r.status_code for r in empty} == {400} and "no [run] or [model]" in empty[0].json()["detail"]
        for text, message in (
            ("[run]\nround_deadline_s = inf\n[model]\n", "must be finite"),
            ("[run]\nlease_timeout_s = nan\n[model]\n", "must be finite"),
            ("[run]\nrounds = 18446744073709551616\n[model]\n", "out of range"),
            ("[run]\nrounds = 1000001\n[model]\n", "run.rounds must be from 1 to 100000"),
            ("a = " + "[" * 600 + "]" * 600 + "\n", "nests"),
            ('[run]\nname = "admin\u202egnp.exe"\n[model]\n', "U+202E"),
            ("[run]\n[model]\noptions = { d_model = 65536, n_layers = 64, n_heads = 4 }\n", "MiB"),
            ("[run]\n[model]\noptions = { n_layers = 1000000000 }\n", "n_layers must be from 1 to 1024"),
            ("[run]\n[data]\noptions = { num_shards = 100000000 }\n[model]\n", "num_shards must be from 1"),
        ):
            answer = http.post("/v1/runs", content=text.encode())
            assert answer.status_code == 400 and message in answer.json()["detail"], (text[:40], answer.text)
    assert len(hub.admin.runs()) == runs
    recipe = tiny_recipe(corpus_dir)
    mine = [attacker.create_run(recipe).run_id for _ in range(3)]
    with hub.http(attacker.token) as http:
        over = http.post("/v1/runs", content=recipe.encode())
        assert over.status_code == 403 and over.json()["error"] == "quota_exceeded"
        workers = [http.post(f"/v1/runs/{mine[0]}/workers", json={"name": f"w{i}"}) for i in range(6)]
        bidi = http.post(f"/v1/runs/{mine[0]}/workers", json={"name": "worker\u202e"})
        group = http.post(f"/v1/runs/{mine[1]}/workers", json={"name": "dgx", "ranks": 5})  # counts 5
    assert [w.status_code for w in workers] == [201] * 4 + [403] * 2
    assert "limits.max_workers" in workers[4].json()["detail"] and bidi.status_code == 422
    assert group.status_code == 403 and "with 5 more" in group.json()["detail"]
    assert len(hub.admin.runs()) == runs + 3 and hub.admin.status(mine[0]).workers == 4


def test_probe_bytes_stream_within_a_budget(hub: Hub, attacker: HubClient) -> None:
    with hub.http(attacker.token) as http:
        down = http.get("/v1/probe", params={"nbytes": 16 << 20})
        up = http.post("/v1/probe", content=bytes(16 << 20))
        over = http.get("/v1/probe", params={"nbytes": 1})
    assert down.status_code == 200 and len(down.content) == 16 << 20 and up.json()["nbytes"] == 16 << 20
    assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
    with hub.http(hub.admin.token) as http:  # admins are not counted
        assert http.get("/v1/probe", params={"nbytes": 1}).status_code == 200


def test_hub_files_are_private_and_its_schema_needs_a_token(hub: Hub, attacker: HubClient) -> None:
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [hub.home, *hub.home.iterdir()]}
    assert mode["hub"] == mode["blobs"] == 0o700
    assert mode["hub.sqlite"] == mode["admin.token"] == 0o600
    assert all(mode[f"hub.sqlite{s}"] == 0o600 for s in ("-wal", "-shm") if f"hub.sqlite{s}" in mode)
    with hub.http(None) as anonymous, hub.http(attacker.token) as provider:
        assert anonymous.get("/openapi.json").status_code == 401
        assert anonymous.get("/docs").status_code == 404
        assert provider.get("/openapi.json").json()["info"]["title"] == "tessera hub"
