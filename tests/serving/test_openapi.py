"""The OpenAPI document channels code against: served to any key, with the example request."""

from __future__ import annotations

from starlette.testclient import TestClient

from serving.schemas import EXAMPLE_REQUEST
from tests.serving.conftest import CHANNEL


def test_openapi_spec_lists_the_endpoints_with_the_example(client: TestClient) -> None:
    r = client.get("/docs.json", headers=CHANNEL)  # any key: channels code against it
    assert r.status_code == 200, r.text
    spec = r.json()
    assert {"/decide", "/outcome", "/events", "/erase", "/healthz"} <= set(spec["paths"])
    assert EXAMPLE_REQUEST in [s.get("example") for s in spec["components"]["schemas"].values()]
