"""The OpenAPI document channels code against: served to any key, with the example request,
every route, the API key scheme and every refusal with its body (issue 15, item 11)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from serving.auth import ADMIN_PATHS
from serving.schemas import EXAMPLE_REQUEST
from tests.serving.conftest import CHANNEL
from tests.serving.test_auth import app_routes

# the pages that serve the document, and BentoML's own service schema: not API routes
UNDOCUMENTED = {"/docs.json", "/docs", "/", "/static_content/{path}", "/schema.json"}
CONSOLE = "/console"  # web pages for people (issue 19), not the API the channels call
JSON_BODY = {"/decide", "/decide/batch", "/outcome", "/events", "/erase", "/journeys/{action}"}
PROBES = {"/livez", "/readyz", "/healthz"}


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    r = client.get("/docs.json", headers=CHANNEL)  # any key: channels code against it
    assert r.status_code == 200, r.text
    return r.json()


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items()}


def test_openapi_spec_lists_the_endpoints_with_the_example(spec: dict[str, Any]) -> None:
    assert {"/decide", "/outcome", "/events", "/erase", "/healthz"} <= set(spec["paths"])
    assert EXAMPLE_REQUEST in [s.get("example") for s in spec["components"]["schemas"].values()]


def test_every_route_of_the_app_is_in_the_document(
    client: TestClient, spec: dict[str, Any]
) -> None:
    """BentoML's document left out the Starlette routes: /profile, /journeys, /outbox,
    /reports, /promote."""
    declared = {
        (m, r)
        for m, r, _ in app_routes(client.app)
        if r not in UNDOCUMENTED and not r.startswith(CONSOLE)
    }
    assert declared == set(operations(spec))


def test_docs_serves_the_document_the_readme_names(
    client: TestClient, spec: dict[str, Any]
) -> None:
    r = client.get("/docs", headers=CHANNEL)  # a 404 before
    assert r.status_code == 200 and r.json() == spec


def test_the_api_key_scheme_is_declared_and_the_probes_need_none(spec: dict[str, Any]) -> None:
    scheme = spec["components"]["securitySchemes"]["ApiKey"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert spec["security"] == [{"ApiKey": []}]
    for (_, path), op in operations(spec).items():
        assert (op.get("security") == []) == (path in PROBES), path


def test_every_refusal_is_declared_where_it_happens(spec: dict[str, Any]) -> None:
    for (method, path), op in operations(spec).items():
        got = set(op["responses"])
        assert "500" not in got, path  # never an answer we give on purpose
        assert ("401" in got) == (path not in PROBES), path
        assert ("403" in got) == path.startswith(ADMIN_PATHS), path
        if method == "POST" and path in JSON_BODY:
            assert {"400", "413", "415"} <= got, path
            assert op["requestBody"]["required"] is True
        for status, response in op["responses"].items():
            if status >= "400" and status != "503" or status == "503" and path != "/readyz":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)


def test_the_error_body_has_detail_as_a_list(spec: dict[str, Any]) -> None:
    error = spec["components"]["schemas"]["Error"]
    assert error["properties"]["detail"]["type"] == "array"
    assert error["required"] == ["error"]


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


@pytest.mark.parametrize(
    ("path", "field"),
    [("/decide", "customer_id"), ("/outcome", "decision_id"), ("/outcome", "customer_id")],
)
def test_fields_that_can_be_null_are_nullable(spec: dict[str, Any], path: str, field: str) -> None:
    """BentoML's inline schemas said ``string`` where ``null`` is returned."""
    response = spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]
    schema = resolve(spec, response["schema"])["properties"][field]
    assert {"type": "null"} in schema["anyOf"], schema
