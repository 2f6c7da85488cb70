"""The authorization matrix of tessera.hub.auth, cell by cell, over HTTP (both backends)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tessera.worker.client import HubClient
from tests.conftest import tiny_recipe

pytestmark = pytest.mark.timeout(120)
ROLES = ("admin", "owner", "member", "outsider", "revoked", "none")


class World:
    """A hub with a collective 'lab', a run owned by 'owner' open to 'lab', and one token per role."""

    def __init__(self, http: TestClient, admin: HubClient, corpus: Path) -> None:
        self.http = http
        admin.create_provider("lab", kind="collective")
        owner = admin.create_provider("owner")
        member = admin.create_provider("member")
        admin.add_member("lab", "member")
        outsider = admin.create_provider("outsider")
        revoked = admin.create_provider("revoked")
        admin.add_member("lab", "revoked")
        admin.revoke_token(revoked.token_id)
        self.tokens = {
            "admin": admin.token,
            "owner": owner.token,
            "member": member.token,
            "outsider": outsider.token,
            "revoked": revoked.token,
            "none": None,
        }
        recipe = tiny_recipe(corpus).replace('name = "tiny"', 'name = "tiny"\ncollective = "lab"')
        self.run_id = HubClient(http, owner.token, retry_s=0).create_run(recipe).run_id
        self.blob = admin.version(self.run_id, 0).blob_sha256
        self.member_token_id = member.token_id

    def call(self, role: str, method: str, path: str, **kwargs: object) -> int:
        token = self.tokens[role]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.request(method, path, headers=headers, **kwargs).status_code  # type: ignore[arg-type]


Action = Callable[[World, str], int]
ACTIONS: dict[str, tuple[Action, dict[str, int]]] = {
    "create provider": (
        lambda w, r: w.call(r, "POST", "/v1/providers", json={"name": f"new-{r}"}),
        {"admin": 201, "owner": 403, "member": 403, "outsider": 403, "revoked": 401, "none": 401},
    ),
    "add collective member": (
        lambda w, r: w.call(r, "POST", "/v1/providers/lab/members", json={"member": "outsider"}),
        {"admin": 200, "owner": 403, "member": 403, "outsider": 403, "revoked": 401, "none": 401},
    ),
    "create run": (
        lambda w, r: w.call(r, "POST", "/v1/runs", content=b"[run]\nrounds = 0\n"),  # 400: reached the parser
        {"admin": 400, "owner": 400, "member": 400, "outsider": 400, "revoked": 401, "none": 401},
    ),
    "register a worker": (
        lambda w, r: w.call(r, "POST", f"/v1/runs/{w.run_id}/workers", json={"name": r}),
        {"admin": 201, "owner": 201, "member": 201, "outsider": 403, "revoked": 401, "none": 401},
    ),
    "lease": (
        lambda w, r: w.call(r, "POST", f"/v1/runs/{w.run_id}/leases", json={"worker_id": "unknown"}),
        {"admin": 404, "owner": 404, "member": 404, "outsider": 403, "revoked": 401, "none": 401},
    ),
    "upload": (
        lambda w, r: w.call(r, "POST", f"/v1/runs/{w.run_id}/contributions", content=b"x"),
        {"admin": 422, "owner": 422, "member": 422, "outsider": 403, "revoked": 401, "none": 401},
    ),
    "read a version blob": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/blobs/{w.blob}"),
        {"admin": 200, "owner": 200, "member": 200, "outsider": 403, "revoked": 401, "none": 401},
    ),
    "read status": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}"),
        {"admin": 200, "owner": 200, "member": 200, "outsider": 403, "revoked": 401, "none": 401},
    ),
    "read metrics": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/rounds"),
        {"admin": 200, "owner": 200, "member": 200, "outsider": 403, "revoked": 401, "none": 401},
    ),
    "read contributions": (
        lambda w, r: w.call(r, "GET", f"/v1/runs/{w.run_id}/contributions"),
        {"admin": 200, "owner": 200, "member": 200, "outsider": 403, "revoked": 401, "none": 401},
    ),
    "read the ledger (contents: tests/test_ledger.py)": (
        lambda w, r: w.call(r, "GET", "/v1/ledger"),
        {"admin": 200, "owner": 200, "member": 200, "outsider": 200, "revoked": 401, "none": 401},
    ),
    "create own token": (
        lambda w, r: w.call(r, "POST", f"/v1/providers/{r}/tokens", json={}),
        {"admin": 201, "owner": 201, "member": 201, "outsider": 201, "revoked": 401, "none": 401},
    ),
    "create a token for another": (
        lambda w, r: w.call(r, "POST", "/v1/providers/member/tokens", json={}),
        {"admin": 201, "owner": 403, "member": 201, "outsider": 403, "revoked": 401, "none": 401},
    ),
    "revoke another's token": (
        lambda w, r: w.call(r, "DELETE", f"/v1/tokens/{w.member_token_id}"),
        {"admin": 204, "owner": 403, "member": 204, "outsider": 403, "revoked": 401, "none": 401},
    ),
}
CELLS = [(action, role) for action in ACTIONS for role in ROLES]


@pytest.mark.parametrize(("action", "role"), CELLS, ids=[f"{a}-{r}" for a, r in CELLS])
def test_authorization_matrix(
    http: TestClient, admin: HubClient, corpus_dir: Path, action: str, role: str
) -> None:
    world = World(http, admin, corpus_dir)
    do, expected = ACTIONS[action]
    assert do(world, role) == expected[role]


def test_runs_list_shows_only_what_one_may_read(http: TestClient, admin: HubClient, corpus_dir: Path) -> None:
    world = World(http, admin, corpus_dir)
    for role, visible in (("admin", 1), ("member", 1), ("outsider", 0)):
        token = world.tokens[role]
        assert len(HubClient(http, token, retry_s=0).runs()) == visible
