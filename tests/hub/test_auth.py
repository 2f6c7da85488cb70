"""The authorization matrix of tessera.hub.auth, cell by cell, over HTTP (both backends)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.api.commons import DatasetRequest
from tessera.api.messages import PledgeRequest, PoolJoinRequest
from tessera.blobs import sha256_hex
from tessera.hub.auth import Principal
from tessera.hub.service import HubService
from tests.helpers import tiny_recipe

pytestmark = pytest.mark.timeout(120)
ROLES = ("admin", "owner", "member", "collective", "outsider", "revoked", "none")


class World:
    """A hub with a collective 'lab', a run owned by 'owner' (a member) open to 'lab', and one
    token per role ('collective': the lab's own token). Set up through the service (what is
    tested is the one request of each cell, over HTTP)."""

    def __init__(self, http: TestClient, service: HubService, corpus: Path) -> None:
        self.http, self.service = http, service
        providers = service.providers
        self.admin_token = providers.bootstrap_admin()
        admin = providers.principal(self.admin_token)
        made = {
            role: providers.create_provider(admin, "lab" if role == "collective" else role, kind, False)
            for role, kind in (
                ("collective", "collective"),
                ("owner", "person"),
                ("member", "person"),
                ("outsider", "person"),
                ("revoked", "person"),
            )
        }
        lab = made["collective"].provider.provider_id
        for role in ("owner", "member", "revoked"):
            providers.add_member(admin, lab, made[role].provider.provider_id)
        providers.revoke_token(admin, made["revoked"].token_id)
        self.tokens: dict[str, str | None] = {role: m.token for role, m in made.items()}
        self.tokens |= {"admin": self.admin_token, "none": None}
        self.names = {role: role for role in ROLES} | {"collective": "lab"}
        self.lab_recipe = tiny_recipe(corpus).replace('name = "tiny"', 'name = "tiny"\ncollective = "lab"')
        self.member_token_id = made["member"].token_id

    @cached_property
    def run_id(self) -> str:
        """The owner's run, created when a cell first needs it (most cells do not)."""
        owner = self.service.providers.principal(self.tokens["owner"])
        return self.service.create_run(owner, self.lab_recipe).run_id

    @cached_property
    def blob(self) -> str:
        owner = self.service.providers.principal(self.tokens["owner"])
        return self.service.version(self.run_id, owner, 0).blob_sha256

    def owners(self) -> Principal:
        return self.service.providers.principal(self.tokens["owner"])

    @cached_property
    def pool_member(self) -> str:
        """A pool worker of the owner's."""
        return self.service.pool.join(self.owners(), PoolJoinRequest(name="owner's")).member_id

    @cached_property
    def pledge(self) -> str:
        """A pledge of the owner's, to the pool."""
        return self.service.pledges.create(self.owners(), PledgeRequest(nodes=1)).pledge_id

    def dataset(self, visibility: str, upload: bool = True) -> str:
        """A dataset version of the owner's with one file (uploaded unless not ``upload``)."""
        body = f"{visibility} {upload}".encode()
        terms = {"collective": "lab"} if visibility == "collective" else {}
        terms |= {"threshold_pflop": 1.0} if visibility == "contributors" else {}
        files = [{"path": "f.txt", "sha256": sha256_hex(body), "size": len(body)}]
        if visibility == "private":  # its id and statistics only
            terms, files, upload = {"root": sha256_hex(body), "file_count": 1}, [], False
        req = DatasetRequest.model_validate(
            {"name": visibility, "licence": "MIT", "visibility": visibility, "files": files, **terms}
        )
        info = self.service.datasets.add(self.owners(), req)
        if upload:
            self.service.datasets.put_file(self.owners(), info.dataset_id, sha256_hex(body), body)
        return info.dataset_id

    def private_request(self, role: str) -> dict[str, object]:
        root = sha256_hex(role.encode())
        return {"name": "mine", "licence": "MIT", "visibility": "private", "root": root, "file_count": 1}

    def call(self, role: str, method: str, path: str, **kwargs: object) -> int:
        token = self.tokens[role]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.request(method, path, headers=headers, **kwargs).status_code  # type: ignore[arg-type]


Action = Callable[[World, str], int]
ACTIONS: dict[str, tuple[Action, dict[str, int]]] = {
    "create provider": (
        lambda w, r: w.call(r, "POST", "/v1/providers", json={"name": f"new-{r}"}),
        {
            "admin": 201,
            "owner": 403,
            "member": 403,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "add collective member": (
        lambda w, r: w.call(r, "POST", "/v1/providers/lab/members", json={"member": "outsider"}),
        {
            "admin": 200,
            "owner": 403,
            "member": 403,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "create run": (
        lambda w, r: w.call(
            r, "POST", "/v1/runs", content=b"[run]\nrounds = 0\n[model]\n"
        ),  # 400: the parser
        {
            "admin": 400,
            "owner": 400,
            "member": 400,
            "collective": 400,
            "outsider": 400,
            "revoked": 401,
            "none": 401,
        },
    ),
    "attach a run to a collective": (
        lambda w, r: w.call(r, "POST", "/v1/runs", content=w.lab_recipe.encode()),
        {
            "admin": 201,
            "owner": 201,
            "member": 201,
            "collective": 201,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "register a worker": (
        lambda w, r: w.call(r, "POST", f"/v1/runs/{w.run_id}/workers", json={"name": r}),
        {
            "admin": 201,
            "owner": 201,
            "member": 201,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "lease": (
        lambda w, r: w.call(r, "POST", f"/v1/runs/{w.run_id}/leases", json={"worker_id": "unknown"}),
        {
            "admin": 404,
            "owner": 404,
            "member": 404,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "upload": (
        lambda w, r: w.call(r, "POST", f"/v1/runs/{w.run_id}/contributions", content=b"x"),
        {
            "admin": 422,
            "owner": 422,
            "member": 422,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read a version blob": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/blobs/{w.blob}"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read status": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read metrics": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/rounds"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read contributions": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/contributions"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read a run's credits": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/credits"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "upload an adapter (no metadata: 422 once allowed)": (
        lambda w, r: w.call(r, "POST", f"/v1/runs/{w.run_id}/adapters", content=b"x"),
        {
            "admin": 422,
            "owner": 422,
            "member": 422,
            "collective": 422,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "list adapters": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/adapters"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read an adapter (none such: 404 once allowed)": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/adapters/00000000000000000000000000000000"),
        {
            "admin": 404,
            "owner": 404,
            "member": 404,
            "collective": 404,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read an adapter's tensors (none such: 404 once allowed)": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/adapters/00000000000000000000000000000000/blob"),
        {
            "admin": 404,
            "owner": 404,
            "member": 404,
            "collective": 404,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read a version": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/versions/0"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read merges": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/merges"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "merge modules (a run without modules: 404 once allowed)": (
        lambda w, r: w.call(r, "POST", f"/v1/runs/{w.run_id}/merges", json={"target": "a", "inputs": ["b"]}),
        {
            "admin": 404,
            "owner": 404,
            "member": 403,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read the ledger (contents: tests/test_ledger.py)": (
        lambda w, r: w.call(r, "GET", "/v1/ledger"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 200,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read the API schema": (
        lambda w, r: w.call(r, "GET", "/openapi.json"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 200,
            "revoked": 401,
            "none": 401,
        },
    ),
    "probe": (
        lambda w, r: w.call(r, "GET", "/v1/probe", params={"nbytes": 16}),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 200,
            "revoked": 401,
            "none": 401,
        },
    ),
    "whoami": (
        lambda w, r: w.call(r, "GET", "/v1/whoami"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 200,
            "revoked": 401,
            "none": 401,
        },
    ),
    "pause a run": (
        lambda w, r: w.call(r, "POST", f"/v1/runs/{w.run_id}/pause"),
        {
            "admin": 200,
            "owner": 200,
            "member": 403,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "resume a run": (
        lambda w, r: w.call(r, "POST", f"/v1/runs/{w.run_id}/resume"),
        {
            "admin": 200,
            "owner": 200,
            "member": 403,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "join the pool": (
        lambda w, r: w.call(r, "POST", "/v1/pool/members", json={}),
        {
            "admin": 201,
            "owner": 201,
            "member": 201,
            "collective": 201,
            "outsider": 201,
            "revoked": 401,
            "none": 401,
        },
    ),
    "list own pool workers": (
        lambda w, r: w.call(r, "GET", "/v1/pool/members"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 200,
            "revoked": 401,
            "none": 401,
        },
    ),
    "place another's pool worker": (
        lambda w, r: w.call(r, "POST", f"/v1/pool/members/{w.pool_member}/assign", json={}),
        {
            "admin": 404,
            "owner": 200,
            "member": 404,
            "collective": 404,
            "outsider": 404,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read the pool's queue": (
        lambda w, r: w.call(r, "GET", "/v1/pool/queue"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 200,
            "revoked": 401,
            "none": 401,
        },
    ),
    "pledge to a run": (
        lambda w, r: w.call(
            r, "POST", "/v1/pledges", json={"target": "run", "target_id": w.run_id, "nodes": 1}
        ),
        {
            "admin": 201,
            "owner": 201,
            "member": 201,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "pledge to a collective": (
        lambda w, r: w.call(
            r, "POST", "/v1/pledges", json={"target": "collective", "target_id": "lab", "steps": 9}
        ),
        {
            "admin": 201,
            "owner": 201,
            "member": 201,
            "collective": 201,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "list own pledges": (
        lambda w, r: w.call(r, "GET", "/v1/pledges"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 200,
            "revoked": 401,
            "none": 401,
        },
    ),
    "cancel another's pledge": (
        lambda w, r: w.call(r, "POST", f"/v1/pledges/{w.pledge}/cancel"),
        {
            "admin": 200,
            "owner": 200,
            "member": 404,
            "collective": 404,
            "outsider": 404,
            "revoked": 401,
            "none": 401,
        },
    ),
    "register a dataset": (
        lambda w, r: w.call(r, "POST", "/v1/datasets", json=w.private_request(r)),
        {
            "admin": 201,
            "owner": 201,
            "member": 201,
            "collective": 201,
            "outsider": 201,
            "revoked": 401,
            "none": 401,
        },
    ),
    "list datasets": (
        lambda w, r: w.call(r, "GET", "/v1/datasets"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 200,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read a public dataset": (
        lambda w, r: w.call(r, "GET", f"/v1/datasets/{w.dataset('public')}"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 200,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read a collective dataset (the lab's)": (
        lambda w, r: w.call(r, "GET", f"/v1/datasets/{w.dataset('collective')}/files"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 404,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read a contributors dataset (no one earned it)": (
        lambda w, r: w.call(r, "GET", f"/v1/datasets/{w.dataset('contributors')}/versions"),
        {
            "admin": 200,
            "owner": 200,
            "member": 404,
            "collective": 404,
            "outsider": 404,
            "revoked": 401,
            "none": 401,
        },
    ),
    "read a private dataset": (
        lambda w, r: w.call(r, "GET", f"/v1/datasets/{w.dataset('private')}/descendants"),
        {
            "admin": 200,
            "owner": 200,
            "member": 404,
            "collective": 404,
            "outsider": 404,
            "revoked": 401,
            "none": 401,
        },
    ),
    "upload a dataset's file": (
        lambda w, r: w.call(
            r,
            "PUT",
            f"/v1/datasets/{w.dataset('public', upload=False)}/files/{sha256_hex(b'public False')}",
            content=b"public False",
        ),
        {
            "admin": 200,
            "owner": 200,
            "member": 403,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "download a public dataset's file": (
        lambda w, r: w.call(
            r, "GET", f"/v1/datasets/{w.dataset('public')}/files/{sha256_hex(b'public True')}"
        ),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 200,
            "outsider": 200,
            "revoked": 401,
            "none": 401,
        },
    ),
    "withdraw a collective dataset": (
        lambda w, r: w.call(
            r, "POST", f"/v1/datasets/{w.dataset('collective')}/withdraw", json={"reason": "x"}
        ),
        {
            "admin": 200,
            "owner": 200,
            "member": 403,
            "collective": 403,
            "outsider": 404,
            "revoked": 401,
            "none": 401,
        },
    ),
    "explain the member's access to a contributors dataset": (
        lambda w, r: w.call(r, "GET", f"/v1/datasets/{w.dataset('contributors')}/access/member"),
        {
            "admin": 200,
            "owner": 200,
            "member": 200,
            "collective": 404,
            "outsider": 404,
            "revoked": 401,
            "none": 401,
        },
    ),
    "revoke the outsider's access to a public dataset": (
        lambda w, r: w.call(r, "POST", f"/v1/datasets/{w.dataset('public')}/access/outsider/revoke", json={}),
        {
            "admin": 200,
            "owner": 200,
            "member": 403,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "restore the outsider's access to a public dataset": (
        lambda w, r: w.call(
            r, "POST", f"/v1/datasets/{w.dataset('public')}/access/outsider/restore", json={}
        ),
        {
            "admin": 200,
            "owner": 200,
            "member": 403,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "create own token": (
        lambda w, r: w.call(r, "POST", f"/v1/providers/{w.names[r]}/tokens", json={}),
        {
            "admin": 201,
            "owner": 201,
            "member": 201,
            "collective": 201,
            "outsider": 201,
            "revoked": 401,
            "none": 401,
        },
    ),
    "create a token for another": (
        lambda w, r: w.call(r, "POST", "/v1/providers/member/tokens", json={}),
        {
            "admin": 201,
            "owner": 403,
            "member": 201,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
    "revoke another's token": (
        lambda w, r: w.call(r, "DELETE", f"/v1/tokens/{w.member_token_id}"),
        {
            "admin": 204,
            "owner": 403,
            "member": 204,
            "collective": 403,
            "outsider": 403,
            "revoked": 401,
            "none": 401,
        },
    ),
}
CELLS = [(action, role) for action in ACTIONS for role in ROLES]


@pytest.mark.parametrize(("action", "role"), CELLS, ids=[f"{a}-{r}" for a, r in CELLS])
def test_authorization_matrix(
    http: TestClient, service: HubService, corpus_dir: Path, action: str, role: str
) -> None:
    world = World(http, service, corpus_dir)
    do, expected = ACTIONS[action]
    assert do(world, role) == expected[role]


def test_runs_list_shows_only_what_one_may_read(
    http: TestClient, service: HubService, corpus_dir: Path
) -> None:
    world = World(http, service, corpus_dir)
    assert world.run_id  # the one run
    for role, visible in (("admin", 1), ("member", 1), ("collective", 1), ("outsider", 0)):
        token = world.tokens[role]
        assert len(HubClient(http, token, retry_s=0).runs()) == visible
