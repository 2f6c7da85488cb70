"""Fuzzing the hub's HTTP API: no input, however malformed, gets a 5xx (fast variant).

Hypothesis generates bodies, headers, JSON documents, recipes and path segments against the
in-process hub with valid and invalid tokens. A run, a worker and a lease exist, so the deep
paths (upload validation, lease checks) are reached too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.api.protocol import META_HEADER
from tests.helpers import tiny_recipe

pytestmark = pytest.mark.timeout(300)
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
SEGMENT = st.text(min_size=1, max_size=40).map(lambda t: quote(t, safe=""))


@pytest.fixture
def target(http: TestClient, admin: HubClient, corpus_dir: Path) -> dict[str, Any]:
    run_id = admin.create_run(tiny_recipe(corpus_dir)).run_id
    token = admin.create_provider("fuzzer").token
    worker = HubClient(http, token, retry_s=0, run_id=run_id)
    worker_id = worker.register("fuzzer").worker_id
    grant = worker.lease(worker_id).lease
    assert grant is not None
    return {
        "http": http,
        "run": run_id,
        "token": token,
        "worker": worker_id,
        "lease": grant.lease_id,
        "admin": admin.token,
    }


def as_json(doc: Any) -> bytes:
    """JSON as Python writes it, NaN and Infinity included (not strict JSON: a hostile client may)."""
    return json.dumps(doc).encode()


def ok(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])


@FUZZ
@given(body=st.binary(max_size=3000), meta=JSON, use_real_lease=st.booleans())
def test_uploads(target: dict[str, Any], body: bytes, meta: Any, use_real_lease: bool) -> None:
    if use_real_lease and isinstance(meta, dict):
        meta = {**meta, "lease_id": target["lease"], "worker_id": target["worker"]}
    headers = {"Authorization": f"Bearer {target['token']}", META_HEADER: json.dumps(meta)}
    ok(target["http"].post(f"/v1/runs/{target['run']}/contributions", content=body, headers=headers))


@FUZZ
@given(doc=JSON, path=st.sampled_from(["leases", "workers"]), as_admin=st.booleans())
def test_worker_json_endpoints(target: dict[str, Any], doc: Any, path: str, as_admin: bool) -> None:
    token = target["admin"] if as_admin else target["token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ok(target["http"].post(f"/v1/runs/{target['run']}/{path}", content=as_json(doc), headers=headers))


@FUZZ
@given(doc=JSON, segment=SEGMENT, route=st.sampled_from(["/v1/providers", "members", "tokens"]))
def test_provider_endpoints(target: dict[str, Any], doc: Any, segment: str, route: str) -> None:
    headers = {"Authorization": f"Bearer {target['admin']}", "Content-Type": "application/json"}
    path = route if route.startswith("/") else f"/v1/providers/{segment}/{route}"
    ok(target["http"].post(path, content=as_json(doc), headers=headers))
    ok(target["http"].delete(f"/v1/tokens/{segment}", headers=headers))


@FUZZ
@given(text=st.text(max_size=400), raw=st.binary(max_size=200))
def test_recipes(target: dict[str, Any], text: str, raw: bytes) -> None:
    headers = {"Authorization": f"Bearer {target['admin']}"}
    ok(target["http"].post("/v1/runs", content=text.encode(), headers=headers))
    ok(target["http"].post("/v1/runs", content=raw, headers=headers))


@FUZZ
@given(
    run=SEGMENT,
    sha=SEGMENT,
    number=SEGMENT,
    token=st.text(max_size=60),
    query=st.dictionaries(st.sampled_from(["round", "x"]), st.text(max_size=10), max_size=2),
)
def test_read_paths(
    target: dict[str, Any], run: str, sha: str, number: str, token: str, query: dict[str, str]
) -> None:
    http = target["http"]
    for bearer in (target["admin"], token.encode("ascii", "ignore").decode()):
        headers = {"Authorization": f"Bearer {bearer}"}
        for path in (
            f"/v1/runs/{run}",
            f"/v1/runs/{run}/rounds",
            f"/v1/runs/{run}/versions/{number}",
            f"/v1/runs/{target['run']}/blobs/{sha}",
            f"/v1/runs/{target['run']}/contributions",
        ):
            ok(http.get(path, headers=headers, params=query))


@FUZZ
@given(doc=JSON, body=st.binary(max_size=200), segment=SEGMENT, as_admin=st.booleans())
def test_dataset_endpoints(
    target: dict[str, Any], doc: Any, body: bytes, segment: str, as_admin: bool
) -> None:
    http = target["http"]
    token = target["admin"] if as_admin else target["token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if isinstance(doc, dict):  # a registration with some fields right, so deeper checks are reached
        doc = {"name": "fuzz", "licence": "MIT", **doc}
    ok(http.post("/v1/datasets", content=as_json(doc), headers=headers))
    sha = "ab" * 32
    for path in (
        f"/v1/datasets/{segment}",
        f"/v1/datasets/{sha}/access/{segment}",
        f"/v1/datasets/{sha}/files",
    ):
        ok(http.get(path, headers=headers))
    ok(http.put(f"/v1/datasets/{sha}/files/{segment}", content=body, headers=headers))
    ok(http.post(f"/v1/datasets/{sha}/withdraw", content=as_json(doc), headers=headers))
