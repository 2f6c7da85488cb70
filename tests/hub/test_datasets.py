"""Dataset versions at the hub over HTTP (both backends): registered by content, uploaded
resumably and checked, versioned, derived with their inputs' terms respected, read by those the
visibility allows (contributors by credited compute), revoked, explained and withdrawn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.api.commons import DatasetRequest
from tessera.blobs import sha256_hex
from tessera.data.datasets import FileEntry, check_manifest, read_manifest
from tessera.errors import Conflict, DataError, Forbidden, MalformedContribution, NotFound, TesseraError
from tessera.hub.service import HubService
from tessera.hub.tables import AccessDecision, LedgerEntry, Run, RunDataset, new_id, new_run
from tessera.worker.datasets import DatasetCache, Terms, add_folder, derive, request_for

pytestmark = pytest.mark.timeout(120)
FILES = {"docs/intro.md": b"# intro\nhello\n", "docs/more.md": b"more words\n", "code/a.py": b"import os\n"}


def folder(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def provider(http: TestClient, admin: HubClient, name: str, kind: str = "person") -> HubClient:
    return HubClient(http, admin.create_provider(name, kind).token, retry_s=0.0)


def test_a_folder_uploads_resumably_and_reads_back(
    http: TestClient, admin: HubClient, tmp_path: Path
) -> None:
    alice, bob = provider(http, admin, "alice"), provider(http, admin, "bob")
    root = folder(tmp_path / "docs")
    files = read_manifest(root)
    public = Terms("docs", "CC-BY-4.0", "public", "hand-written docs")
    first = alice.add_dataset(request_for(public, files))
    assert first.state == "uploading" and len(first.missing) == 3 and first.number == 1
    some = next(f for f in files if f.path == "code/a.py")
    with pytest.raises(MalformedContribution, match="is not file"):  # the wrong bytes: nothing kept
        alice.upload_dataset_file(first.dataset_id, some.sha256, b"import xx\n")
    with pytest.raises(NotFound, match="has no file with sha256"):
        alice.upload_dataset_file(first.dataset_id, "0" * 64, b"")
    with pytest.raises(Forbidden, match="only dataset .* owner"):  # bob may read it, not upload to it
        bob.upload_dataset_file(first.dataset_id, some.sha256, FILES["code/a.py"])
    after_one = alice.upload_dataset_file(first.dataset_id, some.sha256, FILES["code/a.py"])
    assert len(after_one.missing) == 2 and after_one.state == "uploading"
    with pytest.raises(NotFound, match="not uploaded yet"):
        bob.dataset_file(first.dataset_id, next(f for f in files if f.path == "docs/more.md").sha256)

    sent = alice.bytes_up
    resumed = add_folder(alice, root, public)  # the same command again: only what is missing goes
    assert resumed.dataset_id == first.dataset_id and resumed.state == "ready" and not resumed.missing
    assert alice.bytes_up - sent == len(FILES["docs/intro.md"]) + len(FILES["docs/more.md"])
    contents = DatasetCache(tmp_path / "cache").fetch(bob, first.dataset_id)
    assert contents == FILES

    (root / "docs/more.md").write_bytes(b"changed\n")
    second = add_folder(alice, root, public)
    assert (second.number, second.parent_id) == (2, first.dataset_id)
    assert [v.number for v in bob.dataset_versions(second.dataset_id)] == [1, 2]
    with pytest.raises(Conflict, match="a version's terms do not change"):
        add_folder(alice, root, Terms("docs", "MIT", "public"))
    with pytest.raises(Conflict, match="already, which you may use"):
        add_folder(bob, root, Terms("mine", "MIT", "public"))


def test_private_data_is_registered_by_id_and_statistics_only(
    http: TestClient, admin: HubClient, tmp_path: Path
) -> None:
    alice, bob = provider(http, admin, "alice"), provider(http, admin, "bob")
    info = add_folder(alice, folder(tmp_path / "mine"), Terms("diary", "CC-BY-4.0"))
    assert (info.visibility, info.stored, info.state, info.file_count) == ("private", False, "ready", 3)
    assert alice.dataset_files(info.dataset_id) == [] and alice.bytes_up < 2000  # no file was sent
    for read in (bob.dataset, bob.dataset_files, bob.dataset_versions):
        with pytest.raises(NotFound, match="that you may read"):
            read(info.dataset_id)
    assert bob.datasets() == [] and [d.name for d in alice.datasets()] == ["diary"]
    with pytest.raises(NotFound):  # a stranger is not told a private version's terms
        bob.explain_access(info.dataset_id, "bob")
    bad = request_for(Terms("diary", "CC-BY-4.0"), read_manifest(tmp_path / "mine")).model_copy(
        update={"root": None}
    )
    with pytest.raises(DataError, match="registered by its id and statistics only"):
        alice.add_dataset(bad)


def credit(service: HubService, provider_id: str, run_id: str, pflop: float) -> None:
    """Compute credited to a provider on a run, as a round's close writes it."""
    with service.state.transaction() as s:
        fields = {"tokens": 1, "flops_per_token": pflop * 1e15, "amount": pflop, "created_at": 0.0}
        s.add(LedgerEntry(provider_id=provider_id, run_id=run_id, contribution_id=new_id(), version_id="v",
                          kind="compute", **fields))  # fmt: skip


def decisions(service: HubService, provider_id: str) -> list[bool]:
    with service.state.reading() as s:
        return list(
            s.scalars(select(AccessDecision.granted).where(AccessDecision.provider_id == provider_id))
        )


def test_contributors_earn_access_by_credited_compute_and_can_be_revoked(
    http: TestClient, admin: HubClient, service: HubService, tmp_path: Path
) -> None:
    alice, bob = provider(http, admin, "alice"), provider(http, admin, "bob")
    alice_id, bob_id = alice.whoami().provider_id, bob.whoami().provider_id
    with service.state.transaction() as s:
        s.add(new_run("ab" * 16, "alice's run", "", alice_id, None, 0.0))
    terms = Terms("curated", "CC-BY-4.0", "contributors", threshold_pflop=2.0)
    info = add_folder(alice, folder(tmp_path / "curated"), terms)
    with pytest.raises(NotFound):
        bob.dataset(info.dataset_id)
    assert decisions(service, bob_id) == [False]  # a refusal answered 404 is recorded too
    refused = bob.explain_access(info.dataset_id, "bob")
    assert not refused.granted and "0 PFLOP, below the owner's threshold of 2" in refused.reason
    credit(service, bob_id, "ab" * 16, 1.5)
    credit(service, bob_id, "ab" * 16, 0.6)
    assert bob.dataset(info.dataset_id).name == "curated"  # 2.1 PFLOP to alice's runs
    granted = alice.explain_access(info.dataset_id, "bob")
    assert granted.granted and granted.credit_pflop == pytest.approx(2.1)
    revoked = alice.change_access(info.dataset_id, "bob", revoke=True, reason="misuse")
    assert not revoked.granted and "revoked your access: misuse" in revoked.reason
    with pytest.raises(NotFound):
        bob.dataset_files(info.dataset_id)
    with pytest.raises(NotFound):  # no longer a reader: not told it exists
        bob.change_access(info.dataset_id, "bob", revoke=False)
    assert alice.change_access(info.dataset_id, "bob", revoke=False).granted
    assert decisions(service, bob_id) == [False, True, False, True]  # each change of decision, once


def test_collective_members_earn_access_together(
    http: TestClient, admin: HubClient, service: HubService, tmp_path: Path
) -> None:
    alice, carol, dave = (provider(http, admin, n) for n in ("alice", "carol", "dave"))
    lab = admin.create_provider("lab", "collective")
    for member in ("carol", "dave"):
        admin.add_member("lab", member)
    alice_id = alice.whoami().provider_id
    with service.state.transaction() as s:
        s.add(new_run("cd" * 16, "alice's", "", alice_id, None, 0.0))
    shared = add_folder(
        alice, folder(tmp_path / "shared"), Terms("shared", "MIT", "contributors", threshold_pflop=1.0)
    )
    credit(service, carol.whoami().provider_id, "cd" * 16, 0.7)
    credit(service, dave.whoami().provider_id, "cd" * 16, 0.7)
    why = dave.explain_access(shared.dataset_id, "dave")
    assert why.granted and "your collective lab's credited compute" in why.reason
    members_only = add_folder(
        carol, folder(tmp_path / "lab", {"x.txt": b"x"}), Terms("lab", "MIT", "collective", collective="lab")
    )
    assert dave.dataset(members_only.dataset_id).collective == "lab"
    with pytest.raises(NotFound):
        alice.dataset(members_only.dataset_id)
    assert lab.provider.name == "lab"


def test_derivations_keep_their_inputs_terms(http: TestClient, admin: HubClient, tmp_path: Path) -> None:
    alice, bob = provider(http, admin, "alice"), provider(http, admin, "bob")
    cache = DatasetCache(tmp_path / "cache")
    base = add_folder(alice, folder(tmp_path / "base"), Terms("base", "CC-BY-NC-4.0", "public"))
    only_md = {"include": ["*.md"]}
    derived, files = derive(
        bob, cache, [base.dataset_id], "filter", only_md, Terms("md", "CC-BY-NC-4.0", "public")
    )
    assert sorted(files) == ["docs/intro.md", "docs/more.md"] and derived.owner == "bob"
    assert derived.derivation is not None and derived.derivation.inputs == [base.dataset_id]
    assert derived.derivation.code_version.startswith("tessera.data.transforms:filter_files@")
    again, _ = derive(alice, DatasetCache(tmp_path / "other"), [base.dataset_id], "filter", only_md,
                      Terms("md", "CC-BY-NC-4.0", "public"))  # fmt: skip
    assert again.dataset_id == derived.dataset_id and again.owner == "bob"  # reproduced, not a new version
    assert [d.dataset_id for d in alice.dataset_descendants(base.dataset_id)] == [derived.dataset_id]
    with pytest.raises(DataError, match="does not allow .'commercial'. use"):
        derive(bob, cache, [base.dataset_id], "dedupe", {}, Terms("wide", "MIT", "public"))
    nd = add_folder(alice, folder(tmp_path / "nd", {"n.txt": b"n"}), Terms("nd", "CC-BY-ND-4.0", "public"))
    with pytest.raises(DataError, match="allows no derivatives"):
        derive(bob, cache, [nd.dataset_id], "dedupe", {}, Terms("nd2", "CC-BY-ND-4.0", "public"))
    admin.create_provider("lab", "collective")
    admin.add_member("lab", "alice")
    inner = add_folder(
        alice, folder(tmp_path / "inner", {"i.txt": b"i"}), Terms("in", "MIT", "collective", collective="lab")
    )
    with pytest.raises(
        DataError,
        match="is collective; a version derived from it is private, or collective on the same terms",
    ):
        derive(alice, cache, [inner.dataset_id], "dedupe", {}, Terms("out", "MIT", "public"))
    with pytest.raises(NotFound):  # bob may not read it, so may not derive from it
        derive(bob, cache, [inner.dataset_id], "dedupe", {}, Terms("out", "MIT", "private"))
    with pytest.raises(TesseraError, match="has no parameters"):
        bob.add_dataset(
            DatasetRequest.model_validate(
                {
                    **json.loads(
                        request_for(
                            Terms("x", "MIT", "public"), read_manifest(tmp_path / "nd")
                        ).model_dump_json()
                    ),
                    "derivation": {
                        "inputs": [base.dataset_id],
                        "transform": "filter",
                        "params": {"bogus": 1},
                        "code_version": "x",
                    },
                }  # fmt: skip
            )
        )


def test_withdrawal_marks_every_descendant_and_tells_the_runs(
    http: TestClient, admin: HubClient, service: HubService, tmp_path: Path
) -> None:
    alice, bob = provider(http, admin, "alice"), provider(http, admin, "bob")
    cache = DatasetCache(tmp_path / "cache")
    a = add_folder(alice, folder(tmp_path / "a"), Terms("a", "MIT", "public"))
    x = add_folder(bob, folder(tmp_path / "x", {"x.md": b"x\n"}), Terms("x", "MIT", "public"))
    b, _ = derive(bob, cache, [a.dataset_id], "filter", {"include": ["docs/*"]}, Terms("b", "MIT", "public"))
    c, _ = derive(bob, cache, [b.dataset_id], "filter", {"include": ["*intro*"]}, Terms("c", "MIT", "public"))
    d, _ = derive(bob, cache, [a.dataset_id, x.dataset_id], "dedupe", {}, Terms("d", "MIT", "public"))
    bob_id = bob.whoami().provider_id
    with service.state.transaction() as s:
        s.add(new_run("ef" * 16, "bob's", "", bob_id, None, 0.0))
        s.flush()
        s.add(RunDataset(run_id="ef" * 16, dataset_id=c.dataset_id, weight=1.0, position=0))
    with pytest.raises(Forbidden, match="only dataset .* owner"):
        bob.withdraw_dataset(a.dataset_id, "not mine")
    reply = alice.withdraw_dataset(a.dataset_id, "the authors asked")
    assert reply.descendants_marked == 3 and reply.runs_told == ["ef" * 16]
    assert alice.withdraw_dataset(a.dataset_id, "again").withdrawn_at == reply.withdrawn_at
    for version in (b, c, d):
        assert bob.dataset(version.dataset_id).tainted_by == [a.dataset_id]
    assert (
        bob.dataset(x.dataset_id).tainted_by == []
        and bob.dataset(a.dataset_id).withdrawn_reason == "the authors asked"
    )
    with pytest.raises(DataError, match="was withdrawn"):
        derive(bob, cache, [c.dataset_id], "dedupe", {}, Terms("e", "MIT", "public"))
    with service.state.reading() as s:
        assert s.get(Run, "ef" * 16) is not None


def test_listing_a_file_one_does_not_hold_does_not_fetch_it(
    http: TestClient, admin: HubClient, tmp_path: Path
) -> None:
    alice, mallory = provider(http, admin, "alice"), provider(http, admin, "mallory")
    secret = add_folder(alice, folder(tmp_path / "secret", {"s.txt": b"the secret"}),
                        Terms("secret", "MIT", "contributors", threshold_pflop=5.0))  # fmt: skip
    sha = alice.dataset_files(secret.dataset_id)[0].sha256
    for size in (0, len(b"the secret")):  # the hub holds those bytes, but not for mallory
        claim = request_for(
            Terms(f"mine{size}", "MIT", "public"), [FileEntry(f"stolen{size}.txt", sha, size)]
        )
        info = mallory.add_dataset(claim)
        assert info.state == "uploading" and info.missing == [sha]
        with pytest.raises(NotFound, match="not uploaded yet"):
            mallory.dataset_file(info.dataset_id, sha)
    again = add_folder(alice, folder(tmp_path / "more", {"s.txt": b"the secret", "t.txt": b"new"}),
                       Terms("secret", "MIT", "contributors", threshold_pflop=5.0))  # fmt: skip
    assert again.state == "ready" and alice.bytes_up < 1000  # alice's own file: held already


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a": b"x", "a/b": b"y"}, "listed as a file and as a folder"),
        ({"x/../y": b"z"}, "not a relative path"),
    ],
)
def test_manifests_that_cannot_be_written_out_are_refused(files: dict[str, bytes], message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_manifest([FileEntry(p, sha256_hex(b), len(b)) for p, b in files.items()])


def test_derivations_with_repeated_inputs_or_wild_patterns_are_refused(
    http: TestClient, admin: HubClient, tmp_path: Path
) -> None:
    alice = provider(http, admin, "alice")
    base = add_folder(alice, folder(tmp_path / "base"), Terms("base", "MIT", "public"))
    cache = DatasetCache(tmp_path / "cache")
    with pytest.raises(DataError, match="names each input once"):
        derive(alice, cache, [base.dataset_id, base.dataset_id], "dedupe", {}, Terms("d", "MIT", "public"))
    with pytest.raises(DataError, match="is not a regular expression|at most 1000 characters"):
        derive(
            alice,
            cache,
            [base.dataset_id],
            "filter",
            {"contains": "(" * 900 + ")" * 900},
            Terms("f", "MIT", "public"),
        )
    curated = add_folder(
        alice, folder(tmp_path / "c", {"c.txt": b"c"}), Terms("c", "MIT", "contributors", threshold_pflop=2.0)
    )
    bob = provider(http, admin, "bob")
    with pytest.raises(NotFound):  # bob earned nothing: he may not read it, so not derive from it
        derive(
            bob,
            cache,
            [curated.dataset_id],
            "dedupe",
            {},
            Terms("free", "MIT", "contributors", threshold_pflop=0.0),
        )
    with pytest.raises(
        DataError, match="is contributors; a version derived from it is private"
    ):  # cheaper terms
        derive(
            alice,
            cache,
            [curated.dataset_id],
            "dedupe",
            {},
            Terms("cheap", "MIT", "contributors", threshold_pflop=0.5),
        )
