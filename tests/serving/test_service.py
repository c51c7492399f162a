"""The BentoML service in process (ASGI): routes, API keys, and the exact 4xx of bad requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from starlette.testclient import TestClient

from serving.schemas import EXAMPLE_REQUEST
from tests.serving.conftest import ADMIN, CHANNEL

NOW = datetime.now(UTC)
RECENT = (NOW - timedelta(hours=1)).isoformat()  # event times are bounded (issue 12 item 10)
AHEAD = (NOW + timedelta(hours=1)).isoformat()
OLD = (NOW - timedelta(days=60)).isoformat()

EXAMPLE = EXAMPLE_REQUEST


def test_decide_and_outcome_round_trip(client: TestClient) -> None:
    r = client.post("/decide", json=EXAMPLE, headers=CHANNEL)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["arm"] in ("treatment", "holdout") and isinstance(body["fallback"], bool)
    out = {"idempotency_key": "asgi-1", "decision_id": body["decision_id"], "type": "click"}
    first = client.post("/outcome", json=out, headers=CHANNEL).json()
    again = client.post("/outcome", json=out, headers=CHANNEL).json()
    assert first["recorded"] is True and again["recorded"] is False


def test_event_into_the_live_path(client: TestClient) -> None:
    ev = {
        "ts": RECENT,
        "channel": "web",
        "event_type": "basket_add",
        "email": "shopper@example.com",
        "product_id": "data_10gb",
        "value": 5.0,
    }
    r = client.post("/events", json=ev, headers=CHANNEL)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["customer_id"] and body["basket_items"] == 1


def test_healthz_reports_every_part(client: TestClient) -> None:
    body = client.get("/healthz").json()
    assert set(body["parts"]) == {"catalog", "graph", "features", "models", "bandit", "ingest"}
    assert body["parts"]["catalog"] == "ok"


def test_healthz_shows_the_effective_held_out_share(client: TestClient) -> None:
    """5% global and 10% per experiment hold out 14.5% of an experiment's people, not 5%
    (shown to the admin: experiment names are the business's own)."""
    holdouts = client.get("/healthz", headers=ADMIN).json()["holdouts"]
    assert holdouts == {"global_share": 0.05, "experiment_share": 0.1, "effective": {"nbo": 0.145}}


def test_profile_and_outbox(client: TestClient) -> None:
    ev = {"ts": RECENT, "channel": "store", "event_type": "store_visit", "phone": "+4915112345"}
    someone = client.post("/events", json=ev, headers=CHANNEL).json()["customer_id"]
    r = client.get(f"/profile/{someone}", headers=CHANNEL)
    assert r.status_code == 200 and r.json()["recommended"]["customer_id"] == someone
    assert r.json()["excluded"]["device_upgrade"].startswith("rule plan in")  # no profile
    assert client.get("/outbox?channel=email", headers=CHANNEL).json() == {"messages": []}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "error"),
    [
        ("post", "/decide", EXAMPLE, {}, 401, "X-API-Key: missing"),
        ("post", "/decide", EXAMPLE, {"X-API-Key": "guess"}, 401, "X-API-Key: unknown API key"),
        (
            "post",
            "/erase",
            {"customer_id": "c1"},
            CHANNEL,
            403,
            "X-API-Key: /erase needs an admin key",
        ),
        ("get", "/profile/c1", None, {}, 401, "X-API-Key: missing"),
        (
            "post",
            "/decide",
            {**EXAMPLE, "channel": "fax"},
            CHANNEL,
            400,
            "channel: Input should be 'web', 'app', 'email', 'sms', 'call_centre', 'store' or "
            "'paid_media'",
        ),
        ("post", "/decide", {"email": "a@b.c"}, CHANNEL, 400, "channel: required"),
        (
            "post",
            "/decide",
            {**EXAMPLE, "max_offers": 11},
            CHANNEL,
            400,
            "max_offers: Input should be less than or equal to 10",
        ),
        (
            "post",
            "/decide",
            {**EXAMPLE, "context": {"basket": "x"}},
            CHANNEL,
            400,
            "context.basket: Input should be a valid array",
        ),
        ("post", "/decide", {**EXAMPLE, "request": {}}, CHANNEL, 400, "request: unknown field"),
        (
            "post",
            "/decide",
            {**EXAMPLE, "context": {"campaign": "spring_sale"}},
            CHANNEL,
            400,
            "context.campaign: unknown experiment 'spring_sale'; declared: nbo",
        ),
        (
            "post",
            "/outcome",
            {"idempotency_key": "k", "type": "refund", "customer_id": "c"},
            CHANNEL,
            400,
            "type: Input should be 'click', 'conversion', 'revenue', 'delivered' or 'open'",
        ),
        (
            "post",
            "/outcome",
            {"idempotency_key": "k", "type": "conversion", "customer_id": "c", "ts": AHEAD},
            CHANNEL,
            400,
            "ts: more than 5 minutes ahead of the service's clock",
        ),
        (
            "post",
            "/outcome",
            {"idempotency_key": "k", "type": "conversion", "customer_id": "c", "ts": OLD},
            CHANNEL,
            400,
            "ts: older than 37 days (attribution_days + outcome_grace_days)",
        ),
        (
            "post",
            "/events",
            {"channel": "web", "event_type": "purchase", "email": "a@b.c", "ts": AHEAD},
            CHANNEL,
            400,
            "ts: more than 5 minutes ahead of the service's clock",
        ),
        (
            "post",
            "/events",
            {"channel": "web", "event_type": "purchase", "email": "a@b.c", "ts": OLD},
            CHANNEL,
            400,
            "ts: older than 37 days (attribution_days + outcome_grace_days)",
        ),
        (
            "post",
            "/outcome",
            {"idempotency_key": "k", "type": "conversion", "customer_id": "c", "offer_id": "nope"},
            CHANNEL,
            400,
            "offer_id: no such offer in the catalogue",
        ),
        (
            "post",
            "/outcome",
            {"idempotency_key": "k", "type": "delivered", "customer_id": "c"},
            CHANNEL,
            400,
            "decision_id: a delivery receipt needs the message's decision_id",
        ),
        (
            "post",
            "/outcome",
            {"idempotency_key": "k", "type": "click"},
            CHANNEL,
            400,
            "decision_id: give a decision_id or an identifier",
        ),
        (
            "post",
            "/outcome",
            {"idempotency_key": "k", "type": "click", "decision_id": "nope"},
            CHANNEL,
            400,
            "decision_id: no such decision in the ledger",
        ),
        (
            "post",
            "/outcome",
            {"idempotency_key": "", "type": "click", "customer_id": "c"},
            CHANNEL,
            400,
            "idempotency_key: String should have at least 1 character",
        ),
        (
            "post",
            "/events",
            {
                "channel": "web",
                "event_type": "purchase",
                "email": "a@b.c",
                "ts": "2026-01-01T00:00:00",
            },
            CHANNEL,
            400,
            "ts: must carry a timezone (ISO 8601 with an offset, e.g. Z)",
        ),
        ("post", "/erase", {}, ADMIN, 400, "customer_id: required"),
        (
            "get",
            "/outbox?channel=fax",
            None,
            CHANNEL,
            400,
            "channel: must be one of email, sms, call_centre, paid_media, got 'fax'",
        ),
        ("get", "/profile/c1?channel=fax", None, CHANNEL, 400, "channel: unknown channel 'fax'"),
        (
            "get",
            "/profile/" + "x" * 65,
            None,
            CHANNEL,
            400,
            "customer_id: must be 1 to 64 characters",
        ),
    ],
)
def test_bad_requests(
    client: TestClient,
    method: str,
    path: str,
    body: dict | None,
    headers: dict,
    status: int,
    error: str,
) -> None:
    r = client.request(method.upper(), path, json=body, headers=headers)
    assert (r.status_code, r.json()["error"]) == (status, error)


def test_erase_with_admin_key(client: TestClient) -> None:
    ev = {"ts": RECENT, "channel": "app", "event_type": "session_start"}
    ev["email"] = "erase-me@example.com"
    cid = client.post("/events", json=ev, headers=CHANNEL).json()["customer_id"]
    client.post("/decide", json={"customer_id": cid, "channel": "web"}, headers=CHANNEL)
    r = client.post("/erase", json={"customer_id": cid}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["ledger"]["decisions"] == 1, r.json()
    assert r.json()["features"]["event_log"] == 1 and r.json()["identities"] >= 2, r.json()


def test_outcome_times_are_bounded_by_the_services_clock(deps) -> None:
    """Issue 12 item 10 on the service's clock (the replay's is the world's): an outcome an
    hour ahead of it is refused, one a day behind it is kept, whatever the wall says."""
    from pydantic import ValidationError

    from serving.actions import OutcomeRequest, record_outcome

    world = datetime(2025, 6, 1, 12, tzinfo=UTC)
    deps.clock = lambda: world
    ok = OutcomeRequest(idempotency_key="k1", customer_id="c-post", type="revenue", value=5.0,
                        ts=world - timedelta(days=1))  # fmt: skip
    assert record_outcome(ok, deps).recorded
    assert record_outcome(ok.model_copy(update={"idempotency_key": "k2", "ts": None}), deps)
    assert deps.ledger.outcomes_frame()["ts"].max() == world.replace(tzinfo=None)
    ahead = ok.model_copy(update={"idempotency_key": "k3", "ts": world + timedelta(minutes=6)})
    with pytest.raises(ValidationError, match="ts\n  more than 5 minutes ahead"):
        record_outcome(ahead, deps)
