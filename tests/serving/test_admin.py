"""The report and promotion routes of the service, in process, behind their keys."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from starlette.testclient import TestClient

from serving.schemas import EXAMPLE_REQUEST
from tests.serving.conftest import ADMIN, CHANNEL


def test_report_served_behind_a_key(client: TestClient) -> None:
    assert client.get("/reports").status_code == 401
    for i in range(3):  # customers the service knows (an unknown id decides anonymously)
        ev = {"ts": datetime.now(UTC).isoformat(), "channel": "web", "event_type": "product_view",
              "email": f"report-{i}@example.com"}  # fmt: skip
        cid = client.post("/events", json=ev, headers=CHANNEL).json()["customer_id"]
        body = {**EXAMPLE_REQUEST, "email": None, "customer_id": cid}
        assert client.post("/decide", json=body, headers=CHANNEL).status_code == 200
    # built by a process of its own, once the start-up build (if any) is out of the way
    deadline = time.monotonic() + 120
    while not client.post("/reports/refresh", headers=ADMIN).json()["started"]:
        assert time.monotonic() < deadline, "the start-up build never ended"
        time.sleep(0.2)
    # 503 while building; a 404 can still be the start-up build's (before these decisions)
    while (html := client.get("/reports", headers=CHANNEL)).status_code in (503, 404):
        assert time.monotonic() < deadline, html.text
        time.sleep(0.2)
    assert html.status_code == 200, html.text
    assert html.headers["content-type"].startswith("text/html") and "<html" in html.text.lower()
    numbers = client.get("/reports", params={"format": "json"}, headers=CHANNEL)
    assert numbers.status_code == 200 and numbers.json()["n_units"] >= 1


@pytest.mark.parametrize(
    ("path", "headers", "status", "error"),
    [
        ("/reports?format=pdf", CHANNEL, 400, "format: must be html or json, got 'pdf'"),
        ("/promote/churn", None, 401, "X-API-Key: missing"),
        ("/promote/churn", CHANNEL, 403, "X-API-Key: /promote/churn needs an admin key"),
        (
            "/promote/pricing",
            ADMIN,
            400,
            "model: 'pricing' is not one of churn, propensity, bandit, clv",
        ),
    ],
)
def test_bad_admin_requests(
    client: TestClient, path: str, headers: dict | None, status: int, error: str
) -> None:
    method = client.get if path.startswith("/reports") else client.post
    r = method(path, headers=headers or {})
    assert (r.status_code, r.json()["error"]) == (status, error)


def test_promote_without_a_challenger_is_a_conflict(client: TestClient) -> None:
    r = client.post("/promote/churn", headers=ADMIN)
    assert r.status_code == 409, r.text
    assert r.json()["error"].startswith("model: 'churn' has no challenger")
