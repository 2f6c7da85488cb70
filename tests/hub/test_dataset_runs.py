"""Runs that train on dataset versions by id (both backends): licences checked at creation,
leases naming a version's shard by the mixing weights, private versions only on their owner's
workers that hold them, withdrawn versions leased no more, and the hub reading the same shard
files as a worker."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.core.tensors import to_bytes
from tessera.data.datasets import merkle_root, read_manifest
from tessera.errors import ConfigError, Forbidden, NotFound
from tessera.hub.service import HubService
from tessera.hub.tables import LedgerEntry
from tessera.recipe import parse_recipe
from tessera.task import load_data
from tessera.worker.datasets import DatasetCache, HubFiles, Terms, add_folder, derive
from tests.helpers import dataset_recipe, meta, work, zero_update

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def commons(http: TestClient, admin: HubClient, corpus_dir: Path, tmp_path: Path) -> dict[str, object]:
    """alice's public version of the corpus (CC-BY-NC), and bob's private copy of one package."""
    alice = HubClient(http, admin.create_provider("alice").token, retry_s=0.0)
    bob = HubClient(http, admin.create_provider("bob").token, retry_s=0.0)
    public = add_folder(alice, corpus_dir, Terms("corpus", "CC-BY-NC-4.0", "public"))
    private_dir = tmp_path / "bob"
    shutil.copytree(corpus_dir / "alpha", private_dir / "alpha")
    (private_dir / "alpha" / "notes.py").write_text("# bob's own notes\n" * 40)
    private = add_folder(bob, private_dir, Terms("bob-notes", "MIT"))
    return {"alice": alice, "bob": bob, "public": public.dataset_id, "private": private.dataset_id,
            "private_dir": private_dir}  # fmt: skip


def test_licences_and_visibility_are_checked_when_a_run_is_made(commons: dict, admin: HubClient) -> None:  # type: ignore[type-arg]
    alice, public = commons["alice"], commons["public"]
    with pytest.raises(ConfigError, match="allows only research use, and the run declares commercial"):
        alice.create_run(dataset_recipe({public: 1.0}, use="commercial"))
    with pytest.raises(NotFound):
        alice.create_run(dataset_recipe({"ab" * 32: 1.0}))
    assert alice.create_run(dataset_recipe({public: 1.0})).run_id


def test_leases_follow_the_weights_and_private_data_stays_with_its_owner(  # type: ignore[type-arg]
    commons: dict, service: HubService, tmp_path: Path
) -> None:
    alice, bob, public, private = commons["alice"], commons["bob"], commons["public"], commons["private"]
    run_id = alice.create_run(dataset_recipe({public: 1.0, private: 3.0}, quorum=50)).run_id
    alice.select_run(run_id)
    bob.select_run(run_id)
    with pytest.raises(ConfigError, match="not a private dataset of alice's"):
        alice.register("a0", held_datasets=[private])
    mine = [alice.register(f"a{i}").worker_id for i in range(2)]
    theirs = [bob.register(f"b{i}", held_datasets=[private]).worker_id for i in range(2)]
    grants = [alice.lease(w).lease for w in mine] + [bob.lease(w).lease for w in theirs]
    assert all(g is not None for g in grants)
    trained = [(g.dataset_id, g.shard) for g in grants if g is not None]
    # alice's workers may only take the public version; bob's, with 1 : 3 weights, take the
    # private one until its steps are 3x the public one's (3 steps each lease: 6 public, 6 private)
    assert [d for d, _ in trained[:2]] == [public, public]
    assert trained[2][0] == private and trained[2][1] == f"{private[:12]}-private"
    assert {s for d, s in trained[:2]} == {f"{public[:12]}-0", f"{public[:12]}-1"}  # by worker index

    recipe = parse_recipe(alice.status(run_id).recipe)
    hub_data = service.hub.runtimes.load_data(recipe)
    cache = DatasetCache(tmp_path / "cache")
    worker_data = load_data(recipe, datasets=HubFiles(alice, cache))
    shard = trained[0][1]
    assert shard is not None
    hub_batch = next(hub_data.train_batches(shard, 4, 7))
    worker_batch = next(worker_data.train_batches(shard, 4, 7))
    assert torch.equal(hub_batch[0], worker_batch[0])  # the hub replays what the worker trained on
    assert 0 < len(list(cache.blobs.root.glob("*/*"))) < 100  # only the shard's files came down
    own = load_data(recipe, datasets=HubFiles(bob, DatasetCache(tmp_path / "bob"), commons["private_dir"]))
    assert next(own.train_batches(f"{private[:12]}-private", 4, 1))[0].shape == (4, 16)


def test_a_withdrawn_version_is_leased_no_more(commons: dict) -> None:  # type: ignore[type-arg]
    alice, public = commons["alice"], commons["public"]
    run_id = alice.create_run(dataset_recipe({public: 1.0}, quorum=50)).run_id
    alice.select_run(run_id)
    first = alice.register("a0").worker_id
    assert alice.lease(first).lease is not None
    alice.withdraw_dataset(public, "the authors asked")
    late = alice.register("a1").worker_id
    with pytest.raises(Forbidden, match="was withdrawn"):
        alice.lease(late)
    with pytest.raises(ConfigError, match="cannot be used: it was withdrawn"):
        alice.create_run(dataset_recipe({public: 1.0}))


def test_a_private_folder_is_its_version(commons: dict) -> None:  # type: ignore[type-arg]
    assert merkle_root(read_manifest(commons["private_dir"])) == commons["private"]


def test_lineage_reaches_the_datasets_their_tokens_and_whose_compute(  # type: ignore[type-arg]
    commons: dict, http: TestClient, admin: HubClient
) -> None:
    alice, bob, public, private = commons["alice"], commons["bob"], commons["public"], commons["private"]
    derived, _ = derive(bob, DatasetCache(commons["private_dir"].parent / "c"), [public], "filter",
                        {"include": ["beta/*"]}, Terms("beta", "CC-BY-NC-4.0", "public"))  # fmt: skip
    run_id = alice.create_run(dataset_recipe({derived.dataset_id: 1.0, private: 1.0})).run_id
    for client in (alice, bob):
        client.select_run(run_id)
    workers = [
        (alice, alice.register("a").worker_id),
        (bob, bob.register("b", held_datasets=[private]).worker_id),
    ]
    for client, worker_id in workers:
        grant = work(client, worker_id)
        reply = client.submit(meta(grant, worker_id, tokens=64), to_bytes(zero_update(client, grant)))
        assert reply.status == "accepted"
    assert alice.status(run_id).rounds_done == 1
    lineage = bob.lineage(run_id, 1)
    assert [(d.dataset_id, d.weight, d.tokens) for d in lineage.datasets] == [
        (derived.dataset_id, 1.0, 64),
        (private, 1.0, 64),
        (public, None, 0),  # what the filtered version derives from
    ]
    assert lineage.datasets[0].derived_from == [public] and lineage.datasets[0].transform == "filter"
    assert {(c.provider, c.dataset_id, c.tokens) for c in lineage.compute} == {
        ("alice", derived.dataset_id, 64),
        ("bob", private, 64),
    }
    assert alice.lineage(run_id).datasets[1].name is None  # bob's private version: its id only
    assert alice.lineage(run_id, 0).compute == []

    fork_recipe = dataset_recipe({public: 1.0}).replace(
        'use = "research"', f'use = "research"\nfork_of = "{run_id}"\nfork_version = 1'
    )
    fork_id = bob.create_run(fork_recipe).run_id  # bob's own run, from alice's run's version 1
    assert bob.version(fork_id, 0).blob_sha256 == bob.version(run_id, 1).blob_sha256
    forked = bob.lineage(fork_id)
    assert forked.forked_from is not None and (forked.forked_from.run_id, forked.forked_from.version) == (
        run_id,
        1,
    )
    assert {c.provider for c in forked.forked_from.compute} == {"alice", "bob"}
    commercial = dataset_recipe({private: 1.0}, use="commercial").replace(
        'use = "commercial"', f'use = "commercial"\nfork_of = "{run_id}"\nfork_version = 1'
    )
    with pytest.raises(
        ConfigError, match="run.fork_of: run .* was trained on dataset version .* allows only research"
    ):
        bob.create_run(commercial)  # its fork point learnt from CC-BY-NC data

    bob.withdraw_dataset(private, "I changed my mind")
    status = alice.status(run_id)
    assert status.marks == [f"trains on a private dataset ({private[:16]}), since withdrawn by its owner"]
    assert [e.kind for e in alice.events(run_id)] == ["dataset_withdrawn"]
    assert "64 tokens of it" in alice.lineage(run_id).marks[0]
    alice.withdraw_dataset(public, "licence trouble")
    assert len(alice.status(run_id).marks) == 2 and len(alice.events(run_id)) == 2
    assert any(m.startswith(f"forked from run {run_id[:8]}") for m in bob.status(fork_id).marks)


MODULAR = """
[run]
name = "experts"
rounds = 1
quorum = 1

[model]
factory = "tessera.models.modular:build"
options = {{ experts = ["alpha", "beta"], context = 16, d_model = 16, n_layers = 1, n_heads = 2 }}

[data]
datasets = {{ {alpha} = 1.0, {beta} = 1.0 }}
options = {{ context = 16, num_shards = 2 }}

[train]
inner_steps = 3
batch_size = 4

[eval]
batch_size = 4
batches = 2

[modules.trunk]
params = ["tok.*", "pos.*", "ln_f.*", "head.*",
          "blocks.*.ln1.*", "blocks.*.attn.*", "blocks.*.ln2.*", "blocks.*.mlp.*"]
model_options = {{ experts = [] }}

[modules.alpha]
params = ["blocks.*.experts.alpha.*"]
shards = ["{alpha}"]
model_options = {{ experts = ["alpha"] }}

[modules.beta]
params = ["blocks.*.experts.beta.*"]
shards = ["{beta}"]
model_options = {{ experts = ["beta"] }}
"""


def test_experts_trained_only_on_withdrawn_data_are_marked_for_leaving_out(  # type: ignore[type-arg]
    commons: dict, corpus_dir: Path
) -> None:
    alice = commons["alice"]
    alpha = add_folder(alice, corpus_dir / "alpha", Terms("alpha", "MIT", "public")).dataset_id
    beta = add_folder(alice, corpus_dir / "beta", Terms("beta", "MIT", "public")).dataset_id
    run_id = alice.create_run(MODULAR.format(alpha=alpha, beta=beta)).run_id
    modules = {}
    for name, dataset_id in (("alpha", alpha), ("beta", beta)):
        alice.select_run(run_id)
        reply = alice.register(name, module=name)
        alice.select_run(reply.run_id)
        grant = work(alice, reply.worker_id)
        assert (
            grant.dataset_id == dataset_id
            and grant.shard is not None
            and grant.shard.startswith(dataset_id[:12])
        )
        alice.submit(meta(grant, reply.worker_id), to_bytes(zero_update(alice, grant)))
        modules[name] = reply.run_id
    assert [d.dataset_id for d in alice.lineage(modules["alpha"]).datasets] == [alpha]
    alice.withdraw_dataset(alpha, "opted out")
    assert alice.status(modules["alpha"]).marks and not alice.status(modules["beta"]).marks
    marks = alice.lineage(modules["alpha"]).marks
    assert any("module alpha trained only on withdrawn data" in m and "--expert" in m for m in marks)
    assert alice.lineage(modules["beta"]).marks == []


def test_a_worker_cannot_claim_a_public_shard_as_its_own_data(commons: dict) -> None:  # type: ignore[type-arg]
    alice, public = commons["alice"], commons["public"]
    run_id = alice.create_run(dataset_recipe({public: 1.0}, quorum=5)).run_id
    alice.select_run(run_id)
    worker_id = alice.register("a").worker_id
    grant = work(alice, worker_id)
    claim = meta(grant, worker_id).model_copy(update={"own_data": True})  # "not replayable": refused
    alice.submit(claim, to_bytes(zero_update(alice, grant)))
    assert [c.verified for c in alice.contributions(run_id)] == ["pending"]  # replayed like any other


def test_a_worker_learns_the_shards_of_data_it_earned_access_to(  # type: ignore[type-arg]
    commons: dict, service: HubService, corpus_dir: Path, tmp_path: Path
) -> None:
    alice, bob, public = commons["alice"], commons["bob"], commons["public"]
    curated = add_folder(
        alice, corpus_dir / "delta", Terms("curated", "MIT", "contributors", threshold_pflop=1.0)
    )
    run_id = alice.create_run(dataset_recipe({public: 1.0, curated.dataset_id: 1.0})).run_id
    data = load_data(
        parse_recipe(alice.status(run_id).recipe), datasets=HubFiles(bob, DatasetCache(tmp_path / "b"))
    )
    shard = f"{curated.dataset_id[:12]}-0"
    assert shard not in data.shard_names()  # bob may not read it yet
    bob_id = bob.whoami().provider_id
    with service.state.transaction() as s:
        s.add(LedgerEntry(provider_id=bob_id, run_id=run_id,
                          contribution_id="c", version_id="v", kind="compute", tokens=1, flops_per_token=1e15,
                          amount=2.0, created_at=0.0))  # fmt: skip
    assert next(data.train_batches(shard, 4, 0))[0].shape == (4, 16)  # learned when a lease names it
