"""Issue 15 items 3, 6 and 8 at the service's edge: every number, time and string is bounded
(a 4xx naming the field, nothing written), and an id nobody has seen is not invented as a
customer. The tables run against a real ``nextbest serve``; the rest on the real parts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from nextbest.db import engine_for
from nextbest.settings import Settings
from record.ledger import Ledger, caller_key
from serving import actions, run
from serving.actions import OutcomeRequest, record_outcome
from serving.decide import UNKNOWN_ID, DecideRequest, DecideResponse, know, plan
from serving.deps import Deps
from serving.journey_agent import NotFound
from serving.writer import commit
from tests.serving.conftest import CHANNEL

NOW = datetime.now(UTC)
RECENT = (NOW - timedelta(hours=1)).isoformat()
FAR_EAST_YEAR_1 = "0001-01-01T00:00:00+14:00"  # not a UTC time at all: a 500 before
OUT_OF_RANGE = "ts: must fall between 1970-01-01 and 2200-01-01 (UTC)"
NAIVE = "ts: must carry a timezone (ISO 8601 with an offset, e.g. Z)"
UNKNOWN = "customer_id: no such customer (unknown to the identity graph)"
TOO_MUCH = "value: must be at most 1e+06 (max_money_value)"
INFINITE = "value: must be a finite number >= 0, got inf"
PURCHASE = {"ts": RECENT, "channel": "web", "event_type": "purchase", "email": "buyer@example.com"}
CLICK = {"idempotency_key": "k", "type": "revenue"}  # customer_id: the known one (fixture)

# (path, body, status, error): each refused before anything is written
BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("/outcome", {**CLICK, "value": 1e300}, 400, TOO_MUCH),
    ("/outcome", {**CLICK, "value": "Infinity"}, 400, INFINITE),
    ("/outcome", {**CLICK, "value": "NaN"}, 400, "value: Input should be greater than or equal to 0"),  # noqa: E501
    ("/outcome", {**CLICK, "ts": FAR_EAST_YEAR_1}, 400, OUT_OF_RANGE),
    ("/outcome", {**CLICK, "ts": "1497-03-01T00:00:00Z"}, 400, OUT_OF_RANGE),
    ("/outcome", {**CLICK, "ts": "2026-01-01T00:00:00"}, 400, NAIVE),
    ("/outcome", {**CLICK, "customer_id": "nobody"}, 404, UNKNOWN),
    ("/outcome", {"idempotency_key": "k", "type": "click", "email": "no@example.com"}, 404,
     "email: no known customer has this identifier"),
    ("/events", {**PURCHASE, "value": "Infinity"}, 400, INFINITE),
    ("/events", {**PURCHASE, "value": 1e300}, 400, TOO_MUCH),
    ("/events", {**PURCHASE, "ts": FAR_EAST_YEAR_1}, 400, OUT_OF_RANGE),
    ("/events", {**PURCHASE, "ts": "1497-03-01T00:00:00Z"}, 400, OUT_OF_RANGE),
    ("/events", {**PURCHASE, "ts": "2026-01-01T00:00:00"}, 400, NAIVE),
    ("/events", {**PURCHASE, "event_type": "basket_add", "value": 5, "quantity": 2**70}, 400,
     "quantity: Input should be less than or equal to 10000"),
    ("/events", {**PURCHASE, "event_id": "e" * 200}, 400,
     "event_id: String should have at most 64 characters"),  # said idempotency_key before
    ("/events", {**PURCHASE, "event_id": "e" * 2**20}, 413,
     "body: larger than 65536 bytes"),  # accepted and echoed before
    ("/events", {**PURCHASE, "email": "e" * 257}, 400,
     "email: String should have at most 256 characters"),
    ("/events", {**PURCHASE, "product_id": "p" * 65}, 400,
     "product_id: String should have at most 64 characters"),
    ("/events", {**PURCHASE, "order_id": "o" * 129}, 400,
     "order_id: String should have at most 128 characters"),
    ("/events", {**PURCHASE, "campaign_id": "c" * 65}, 400,
     "campaign_id: String should have at most 64 characters"),
    ("/events", {**PURCHASE, "channel": "w" * 33}, 400,
     "channel: String should have at most 32 characters"),
    ("/decide", {"channel": "web", "context": {"basket": ["p" * 65]}}, 400,
     "context.basket[0]: String should have at most 64 characters"),
]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings, str]]:
    """A real ``nextbest serve`` over an empty home, and a customer its graph knows."""
    home = tmp_path_factory.mktemp("bounds")
    settings = Settings(home=home, workers=1)
    with run.served(settings, log=home / "server.log") as base:
        ev = {"ts": RECENT, "channel": "app", "event_type": "session_start", "email": "k@ex.com"}
        r = httpx.post(f"{base}/events", json=ev, headers=CHANNEL, timeout=30)
        assert r.status_code == 200, r.text
        yield base, settings, r.json()["customer_id"]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "body", "status", "error"), BAD, ids=[b[3][:60] for b in BAD])
def test_bad_values_are_refused_naming_the_field(
    served: tuple[str, Settings, str], path: str, body: dict, status: int, error: str
) -> None:
    base, settings, known = served
    if path == "/outcome" and not ({"customer_id", "email"} & set(body)):
        body = {**body, "customer_id": known}
    r = httpx.post(f"{base}{path}", json=body, headers=CHANNEL, timeout=30)
    assert (r.status_code, r.json()["error"]) == (status, error), r.text
    assert r.json()["field"] == error.split(":")[0]
    assert len(r.content) < 4000  # nothing of a megabyte echoed
    assert "idempotency_key" not in r.text or path == "/outcome"
    ledger = Ledger(engine_for(settings.ledger_db_url))
    assert ledger.outcomes_frame().empty  # refused before anything was written


@pytest.mark.slow
def test_unknown_ids_are_not_invented(served: tuple[str, Settings, str]) -> None:
    """A customer_id the service never saw decides as an unknown visitor (null in the answer
    and the ledger, the reason says so); /profile of it is a 404; an outcome naming its
    decision is taken (the ledger knows that decision), one naming the id is a 404."""
    base, settings, known = served
    with httpx.Client(base_url=base, headers=CHANNEL, timeout=30) as client:
        r = client.post("/decide", json={"customer_id": "nobody", "channel": "web"})
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["customer_id"] is None, d
        assert UNKNOWN_ID in d["reasons"]
        row = Ledger(engine_for(settings.ledger_db_url)).decision(d["decision_id"])
        assert row.customer_id is None
        mine = client.post("/decide", json={"customer_id": known, "channel": "web"}).json()
        assert mine["customer_id"] == known

        r = client.get("/profile/nobody")
        assert (r.status_code, r.json()) == (404, {"error": UNKNOWN, "field": "customer_id"})
        assert client.get(f"/profile/{known}").status_code == 200

        out = {"idempotency_key": "by-decision", "type": "click", "decision_id": d["decision_id"]}
        r = client.post("/outcome", json=out)
        assert r.status_code == 200 and r.json()["recorded"] is True, r.text
        r = client.post("/outcome", json={**out, "idempotency_key": "x", "decision_id": None,
                                          "customer_id": "nobody"})  # fmt: skip
        assert (r.status_code, r.json()["field"]) == (404, "customer_id"), r.text
    keys = set(Ledger(engine_for(settings.ledger_db_url)).outcomes_frame()["idempotency_key"])
    assert keys == {caller_key("by-decision")}


def decide(request: DecideRequest, deps: Deps) -> DecideResponse:
    """POST /decide's path on the plain parts: the channel's customer_id is verified."""
    known = know(request, deps, verify=True)
    return commit(lambda: plan(request, deps, known), deps.ledger)[0]


def test_decide_resolves_a_customer_id_through_the_graph(deps: Deps) -> None:
    """An unknown customer_id with a known e-mail is that e-mail's customer; a merged-away id
    is the person's id now."""
    from features.identity import Identifiers

    cid = deps.graph.link(Identifiers(email="known@example.com"))
    both = decide(DecideRequest(customer_id="nobody", email="known@example.com", channel="web"),
                  deps)  # fmt: skip
    assert both.customer_id == cid and not any("unknown" in r for r in both.reasons)
    alone = decide(DecideRequest(customer_id="nobody", channel="web"), deps)
    assert alone.customer_id is None and deps.ledger.decision(alone.decision_id).customer_id is None
    assert deps.graph.lookup(Identifiers(customer_id="c-post")) == "c-post"  # the fixture's


def test_outcome_of_an_unknown_customer_is_refused_before_anything_is_written(
    deps: Deps,
) -> None:
    with pytest.raises(NotFound, match="^customer_id: no such customer"):
        record_outcome(OutcomeRequest(idempotency_key="u", customer_id="nobody", type="revenue",
                                      value=5.0), deps)  # fmt: skip
    ok = record_outcome(OutcomeRequest(idempotency_key="k", customer_id="c-post", type="revenue",
                                       value=5.0), deps)  # fmt: skip
    assert ok.recorded and list(deps.ledger.outcomes_frame()["idempotency_key"]) == [
        caller_key("k")
    ]


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({**PURCHASE, "ts": FAR_EAST_YEAR_1}, f"ts\n  {OUT_OF_RANGE[4:]}"),
        ({**PURCHASE, "value": 1e300}, f"value\n  {TOO_MUCH[7:]}"),
        ({**PURCHASE, "value": "Infinity"}, f"value\n  {INFINITE[7:]}"),
    ],
)
def test_a_refused_event_leaves_no_trace(deps: Deps, event: dict, error: str) -> None:
    """Refused before the identity link, the event log and the ledger (a 500 came after the
    event was ingested before)."""
    from features.identity import Identifiers

    with pytest.raises(ValidationError, match=re.escape(error)):
        actions.ingest(event, deps)
    assert deps.ledger.outcomes_frame().empty
    assert deps.graph.lookup(Identifiers(email=PURCHASE["email"])) is None


def test_naive_times_follow_one_rule(deps: Deps) -> None:
    """/outcome refuses a naive time as /events does, instead of reading it as UTC."""
    with pytest.raises(ValidationError, match="ts\n  must carry a timezone"):
        OutcomeRequest(idempotency_key="n", customer_id="c-post", type="click",
                       ts=datetime(2026, 1, 1))  # fmt: skip


def test_unknown_customer_id_is_a_cold_start_not_a_fallback(deps: Deps) -> None:
    """A customer new to us is normal: the decision says why it knows nothing, and does not
    count as degraded (``fallback`` is for a part that failed)."""
    d = decide(DecideRequest(customer_id="nobody", channel="web"), deps)
    known = decide(DecideRequest(customer_id="c-post", channel="web"), deps)
    assert (d.customer_id, d.reasons) == (None, [UNKNOWN_ID, *known.reasons])
    assert d.fallback == known.fallback  # no models here: both fall back, for that reason only


def test_ids_from_our_own_records_are_taken_as_given(deps: Deps) -> None:
    """The journey runner and the basket scan decide for ids they read from the ledger: no
    graph lookup on their path (``verify`` is the channel's, POST /decide's)."""
    from serving.decide import decide as internal

    assert internal(DecideRequest(customer_id="ledger-id", channel="web"), deps).customer_id == (
        "ledger-id"
    )
