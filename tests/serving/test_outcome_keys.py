"""Each kind of outcome has its own key space, and a key is one payload (issue 15 item 7): a
caller's ``/outcome`` key can never equal the key a purchase event records its revenue under,
and a caller's key reused for a different payload is a 409 with the stored record."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from record.tables import now, outcomes
from serving import actions
from serving.decide import DecideRequest, decide
from serving.deps import Deps
from serving.unavailable import Refused


def _outcome(**kw: Any) -> actions.OutcomeRequest:
    return actions.OutcomeRequest(**{"idempotency_key": "k1", "type": "revenue",
                                     "customer_id": "c-post", "value": 20.0, **kw})  # fmt: skip


def test_a_caller_key_like_an_events_key_leaves_the_purchase_its_revenue(
    ledger_deps: Deps,
) -> None:
    deps = ledger_deps
    ts = now() - timedelta(minutes=5)
    first = actions.record_outcome(_outcome(idempotency_key="event:buy-9", type="click"), deps)
    assert first.recorded is True and first.idempotency_key == "event:buy-9"
    ev = {"event_id": "buy-9", "ts": ts.isoformat(), "channel": "store", "event_type": "purchase",
          "customer_id": "c-post", "product_id": "data_10gb", "value": 30.0}  # fmt: skip
    assert actions.ingest(ev, deps)["outcome_recorded"] is True
    frame = deps.ledger.outcomes_frame().set_index("type")
    assert frame.loc["revenue", "value"] == 30.0 and frame.loc["click", "value"] == 20.0


def test_a_key_stored_before_key_spaces_still_counts_once(ledger_deps: Deps) -> None:
    """A ledger written before this change holds callers' keys as they sent them: a retry
    of one is still recognised."""
    deps, at = ledger_deps, now() - timedelta(minutes=5)
    row = {"idempotency_key": "old-key", "customer_id": "c-post", "type": "revenue",
           "value": 20.0, "ts": at}  # fmt: skip
    with deps.ledger.engine.begin() as conn:
        conn.execute(insert(outcomes), [row])
    again = actions.record_outcome(_outcome(idempotency_key="old-key", ts=at), deps)
    assert again.recorded is False
    assert len(deps.ledger.outcomes_frame()) == 1


AT = now() - timedelta(minutes=30)
REUSED = [  # the second report's change -> the field the 409 names first
    ({"value": 21.0}, "value"),
    ({"type": "conversion"}, "type"),
    ({"customer_id": "c-pre"}, "customer_id"),
    ({"ts": AT + timedelta(seconds=1)}, "ts"),
    ({"order_id": "o-2"}, "order_id"),
    ({"offer_id": "device_upgrade"}, "offer_id"),
]


@pytest.mark.parametrize(("change", "field"), REUSED)
def test_a_key_reused_for_another_payload_is_a_409_with_the_stored_record(
    ledger_deps: Deps, change: dict, field: str
) -> None:
    deps = ledger_deps
    first = _outcome(ts=AT, order_id="o-1")
    assert actions.record_outcome(first, deps).recorded is True
    assert actions.record_outcome(first, deps).recorded is False  # the same payload: a retry
    with pytest.raises(Refused) as info:
        actions.record_outcome(first.model_copy(update=change), deps)
    assert info.value.status == 409
    body = info.value.body
    assert body["field"] == "idempotency_key"
    assert body["error"] == (
        f"idempotency_key: already recorded with another payload ({field} differs)"
    )
    assert body["stored"] == {"idempotency_key": "k1", "decision_id": None,
                              "customer_id": "c-post", "type": "revenue", "value": 20.0,
                              "ts": AT.isoformat(), "order_id": "o-1",
                              "offer_id": None}  # fmt: skip
    assert len(deps.ledger.outcomes_frame()) == 1


def test_a_retry_without_a_time_is_the_same_payload(ledger_deps: Deps) -> None:
    """No ``ts`` means "now", a different now on the retry: still the same report."""
    deps = ledger_deps
    d = decide(DecideRequest(customer_id="c-post", channel="web"), deps)
    click = actions.OutcomeRequest(idempotency_key="c1", decision_id=d.decision_id, type="click")
    assert actions.record_outcome(click, deps).recorded is True
    assert actions.record_outcome(click, deps).recorded is False
