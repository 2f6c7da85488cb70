"""The published schema is the truth: property-based requests (schemathesis, positive and
negative cases) against the in-process hub, on SQLite and PostgreSQL, find no server error, no
undocumented status code and no response that differs from the schema."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import CHECKS, load_all_checks, positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tessera.hub.app import create_app
from tessera.hub.service import HubService

pytestmark = pytest.mark.timeout(600)
EXAMPLES = 12  # per operation and backend: bounded to stay inside make test's budget
load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())


@schemathesis.serializer("application/toml")
def toml_text(_: Any, value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else str(value).encode()


@pytest.fixture
def api(service: HubService) -> OpenApiSchema:
    """The hub's schema as a holder of the admin token reads it, requests sent with that token."""
    token = service.providers.bootstrap_admin()
    app = create_app(service, tick_s=None)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {token}"})


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: Case) -> None:
    """Every check schemathesis has; a recipe is any text to the schema, so a refused recipe is
    not counted as valid input refused."""
    toml = case.operation.path == "/v1/runs" and case.method == "POST"
    case.call_and_validate(checks=ALL_CHECKS, excluded_checks=[positive_data_acceptance] if toml else None)


def test_bodies_that_are_not_json_are_documented(api: OpenApiSchema) -> None:
    paths = api.raw_schema["paths"]
    media = {
        ("/v1/runs", "post"): "application/toml",
        ("/v1/runs/{run_id}/contributions", "post"): "application/octet-stream",
        ("/v1/probe", "post"): "application/octet-stream",
    }
    for (path, method), kind in media.items():
        assert kind in paths[path][method]["requestBody"]["content"]
    for path, methods in paths.items():
        for method, operation in methods.items():
            errors = {"400", "401", "403", "404", "422"}
            assert errors <= set(operation["responses"]), (method, path)
            for code in errors:
                assert operation["responses"][code]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"
                }
