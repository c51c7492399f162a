"""An event is applied once everywhere, or not acknowledged as applied (issue 15 item 4): a
retried ``event_id`` changes nothing a first copy changed (live basket, journeys, revenue),
and a sink that fails answers 503 so the caller retries, the retry completing what is left."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from journeys.intent_state import journey_pending_entries
from record.tables import now, outcomes
from serving import actions, outbox
from serving.deps import Deps
from serving.journey_intents import enter_due_intents
from serving.unavailable import Refused
from tests.serving.journey_fixtures import activate


def _event(kind: str, event_id: str, minutes_ago: float = 5, **kw: Any) -> dict[str, Any]:
    ts = (now() - timedelta(minutes=minutes_ago)).isoformat()
    return {"event_id": event_id, "ts": ts, "channel": "web", "event_type": kind, **kw}


BASKET_ADD = {"email": "ann@example.com", "product_id": "data_10gb", "value": 5.0}


def test_a_basket_add_sent_three_times_is_in_the_basket_once(ledger_deps: Deps) -> None:
    deps, ev = ledger_deps, _event("basket_add", "add-1", **BASKET_ADD)
    answers = [actions.ingest(ev, deps) for _ in range(3)]
    basket = outbox.live_basket(answers[0]["customer_id"], deps)
    assert (basket["products"], basket["value"]) == (["data_10gb"], 5.0)
    other = actions.ingest(_event("basket_add", "add-2", **BASKET_ADD), deps)  # a new event
    assert outbox.live_basket(other["customer_id"], deps)["products"] == ["data_10gb"] * 2


def test_a_purchase_sent_twice_is_one_revenue_and_one_checkout(ledger_deps: Deps) -> None:
    deps = ledger_deps
    bought = _event("purchase", "buy-1", **BASKET_ADD)
    cid = actions.ingest(bought, deps)["customer_id"]
    actions.ingest(_event("basket_add", "add-3", **BASKET_ADD), deps)  # a new basket after it
    again = actions.ingest(bought, deps)  # a late retry of the purchase
    assert again["outcome_recorded"] is False and "baskets_closed" not in again
    assert outbox.live_basket(cid, deps)["products"] == ["data_10gb"]  # the new basket stays
    with deps.ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outcomes)).scalar_one() == 1


def _pending_entries(deps: Deps) -> int:
    with deps.ledger.engine.connect() as conn:
        q = select(func.count()).select_from(journey_pending_entries)
        return conn.execute(q).scalar_one()


def test_a_retried_event_moves_no_journey_twice(ledger_deps: Deps) -> None:
    """The abandoned-basket journey's idle entry: the basket entered it once it was due; the
    same basket_add again must not queue a second entry."""
    deps = ledger_deps
    activate(deps)
    ev = _event("basket_add", "add-4", minutes_ago=90, **BASKET_ADD)
    assert actions.ingest(ev, deps)["entries_pending"] == 1
    assert enter_due_intents(deps, now()) == 1 and _pending_entries(deps) == 0
    again = actions.ingest(ev, deps)
    assert "entries_pending" not in again and _pending_entries(deps) == 0


def _flaky(fails: int, error: Exception) -> Callable[..., dict]:
    """An ingest (the feature path) that fails ``fails`` times, then works; its calls counted."""
    calls: list[str] = []

    def ingest(event: Any, **_: Any) -> dict:
        calls.append(event.event_id)
        if len(calls) <= fails:
            raise error
        return {"pushed": True}

    ingest.calls = calls  # type: ignore[attr-defined]
    return ingest


def test_a_failed_feature_push_is_a_503_and_the_retry_completes(ledger_deps: Deps) -> None:
    """Redis down: 503 naming ``features`` (not 200 with "ingest failed"); the ledger's part is
    applied once, and the retry pushes the features without adding to the basket again."""
    deps = ledger_deps
    deps.ingest = _flaky(1, ConnectionError("Error 111 connecting to 127.0.0.1:6379"))
    ev = _event("basket_add", "add-5", **BASKET_ADD)
    with pytest.raises(Refused) as info:
        actions.ingest(ev, deps)
    assert info.value.status == 503
    assert info.value.body == {
        "error": "features: ConnectionError: Error 111 connecting to 127.0.0.1:6379",
        "field": "features",
        "event_id": "add-5",
    }
    retry = actions.ingest(ev, deps)
    assert retry["pushed"] is True and deps.ingest.calls == ["add-5", "add-5"]
    assert outbox.live_basket(retry["customer_id"], deps)["products"] == ["data_10gb"]


def test_a_failed_ledger_write_is_a_503_and_the_retry_completes(
    ledger_deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The basket's write fails once: 503 naming ``ledger``; the retry applies it, once."""
    deps, real = ledger_deps, outbox.track_event
    failures = [RuntimeError("disk full")]

    def track_event(*args: Any, **kw: Any) -> dict:
        if failures:
            raise failures.pop()
        return real(*args, **kw)

    monkeypatch.setattr(outbox, "track_event", track_event)
    ev = _event("basket_add", "add-6", **BASKET_ADD)
    with pytest.raises(Refused) as info:
        actions.ingest(ev, deps)
    assert (info.value.status, info.value.body["field"]) == (503, "ledger")
    assert info.value.body["error"] == "ledger: RuntimeError: disk full"
    retry = actions.ingest(ev, deps)
    assert outbox.live_basket(retry["customer_id"], deps)["products"] == ["data_10gb"]


def test_a_copy_being_applied_elsewhere_is_a_503_that_changes_nothing(ledger_deps: Deps) -> None:
    """Two copies at once: the one that finds the other's claim on the push applies nothing
    (the other applies it all) and says so, so its client retries."""
    from features.ingest import PushInProgress

    deps = ledger_deps
    deps.ingest = _flaky(1, PushInProgress("event add-7 is being pushed by another request"))
    with pytest.raises(Refused) as info:
        actions.ingest(_event("basket_add", "add-7", **BASKET_ADD), deps)
    assert (info.value.status, info.value.body) == (503, {
        "error": "features: event add-7 is being pushed by another request",
        "field": "features", "event_id": "add-7"})  # fmt: skip
    assert deps.ledger.counts()["baskets"] == 0


def test_an_outcomes_journey_effects_happen_once_a_failure_retried(
    ledger_deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender's click: its journey effect fails the first time (503, the click recorded);
    the retry (recorded: false) completes it; a third copy does nothing more."""
    from serving import journey_events
    from serving.decide import DecideRequest, decide

    deps, calls = ledger_deps, []

    def on_outcome(*args: Any) -> int:
        calls.append(args[0])
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return 0

    monkeypatch.setattr(journey_events, "on_outcome", on_outcome)
    did = decide(DecideRequest(customer_id="c-post", channel="email"), deps).decision_id
    click = actions.OutcomeRequest(idempotency_key="click-1", decision_id=did, type="click")
    with pytest.raises(Refused) as info:
        actions.record_outcome(click, deps)
    assert info.value.status == 503
    assert info.value.body == {"error": "ledger: RuntimeError: database is locked",
                               "field": "ledger", "idempotency_key": "click-1"}  # fmt: skip
    assert actions.record_outcome(click, deps).recorded is False and calls == ["click"] * 2
    assert actions.record_outcome(click, deps).recorded is False and calls == ["click"] * 2


def test_concurrent_basket_events_of_a_new_customer_all_count(ledger_deps: Deps) -> None:
    """Eight workers add eight products to one new customer's basket at once: every one is
    in it. Before, on PostgreSQL, all but one creator hit the primary key, and the update after
    it ran in an aborted transaction (a 503); and two updates of one basket could overwrite
    each other's items."""
    from concurrent.futures import ThreadPoolExecutor

    from features.events import parse_event
    from record.tables import baskets

    events = [
        parse_event(
            _event("basket_add", f"race-{i}", customer_id="c-race", product_id=f"p{i}", value=1.0)
        )
        for i in range(8)
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda ev: outbox.track_event(ev, "c-race", ledger_deps), events))
    with ledger_deps.ledger.engine.connect() as conn:
        row = conn.execute(select(baskets).where(baskets.c.customer_id == "c-race")).one()
    assert (row.status, sorted(row.products)) == ("open", [f"p{i}" for i in range(8)])
