"""Act on intent: an abandoned web basket becomes an e-mail decision in the outbox; a purchase
under another of the person's identifiers cancels it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from record.tables import now
from serving import actions, outbox
from serving.deps import Deps


def _event(kind: str, minutes_ago: float, **kw: object) -> dict:
    ts = (now() - timedelta(minutes=minutes_ago)).isoformat()
    return {"ts": ts, "channel": "web", "event_type": kind, **kw}


def _basket(deps: Deps, email: str, minutes_ago: float) -> str:
    r = actions.ingest(
        _event("basket_add", minutes_ago, email=email, product_id="data_10gb", value=5.0), deps
    )
    return r["customer_id"]


def test_abandoned_basket_queues_an_email_and_purchase_cancels(deps: Deps, profiles: dict) -> None:
    from features.identity import Identifiers

    cid = deps.graph.link(Identifiers(email="ann@example.com", phone="07700 900123"))
    profiles[cid] = profiles["c-post"]  # e-mail consent, several offers eligible
    deps.settings.epsilon = 0.0  # no model: every offer ties, so one of the real ones is drawn
    assert _basket(deps, "ANN@example.com ", minutes_ago=90) == cid
    assert outbox.live_basket(cid, deps)["products"] == ["data_10gb"]
    queued = outbox.scan_abandoned(deps)
    assert outbox.scan_abandoned(deps) == []  # a basket triggers once
    rows = deps.ledger.logs()
    if rows["offer_id"].iloc[0] == "no_offer":  # the tie includes "no offer": then SMS is tried
        assert set(rows["channel"]) == {"email", "sms"}
        return
    (msg,) = queued
    assert msg["channel"] == "email" and msg["trigger"] == "abandoned_basket"
    row = deps.ledger.decision(msg["decision_id"])
    assert row.context["intent"] == "abandoned_basket" and row.channel == "email"
    assert [m["message_id"] for m in outbox.pending(deps, "email", claim=False)] == [
        msg["message_id"]
    ]
    # bought in store, identified only by the phone number, written another way
    ev = _event("purchase", 1, channel="store", phone="+44 7700 900123", value=5.0)
    res = actions.ingest({**ev, "product_id": "data_10gb"}, deps)
    assert res["customer_id"] == cid and res["messages_cancelled"] == 1
    assert outbox.pending(deps, "email") == []


def test_fresh_basket_and_no_consent_send_nothing(deps: Deps, profiles: dict) -> None:
    _basket(deps, "fresh@example.com", minutes_ago=5)
    assert outbox.scan_abandoned(deps) == []  # not idle long enough
    assert deps.ledger.counts()["decisions"] == 0
    cid = _basket(deps, "noconsent@example.com", minutes_ago=120)
    profiles[cid] = profiles["c-pre"]  # no e-mail or SMS consent, nothing eligible
    assert outbox.scan_abandoned(deps) == []
    rows = deps.ledger.logs()
    assert set(rows["channel"]) == {"email", "sms"}  # both tried, both logged
    assert set(rows["offer_id"]) == {"no_offer"}


def test_purchase_is_an_idempotent_outcome(deps: Deps) -> None:
    ev = _event("purchase", 1, email="bob@example.com", value=12.0, event_id="e-1")
    assert actions.ingest(ev, deps)["outcome_recorded"] is True
    assert actions.ingest(ev, deps)["outcome_recorded"] is False


@pytest.mark.parametrize(
    ("event", "match"),
    [
        ({"channel": "web", "event_type": "basket_add", "email": "a@b.c"}, "ts\n  required"),
        (_event("basket_add", 1, email="a@b.c"), "value\n  required for a basket_add event"),
        (_event("teleport", 1, email="a@b.c"), "event_type\n  event_type 'teleport' is not in"),
        (_event("purchase", 1), "identifiers\n  no identifier at all"),
    ],
)
def test_bad_events(deps: Deps, event: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        actions.ingest(event, deps)


def test_holdout_basket_gets_no_message(deps: Deps, profiles: dict) -> None:
    deps.settings.global_holdout_share = 0.99  # nearly everyone held out
    cid = _basket(deps, "held@example.com", minutes_ago=120)
    profiles[cid] = profiles["c-post"]
    assert outbox.scan_abandoned(deps) == []
    rows = deps.ledger.logs()
    assert list(rows["arm"]) == ["holdout"] and rows["offer_id"].isna().all()  # a row, no offer
    assert list(rows["channel"]) == ["email"]  # and no second try on SMS


def test_email_cap_moves_the_message_to_sms(deps: Deps, profiles: dict) -> None:
    deps.settings.contact_caps = {"email": 0}  # e-mail capped out: SMS is tried next
    cid = _basket(deps, "capped@example.com", minutes_ago=120)
    profiles[cid] = {**profiles["c-post"], "consent_sms": True}
    deps.settings.epsilon = 0.0
    queued = outbox.scan_abandoned(deps)
    rows = deps.ledger.logs()
    assert rows["channel"].iloc[0] == "email" and rows["offer_id"].iloc[0] == "no_offer"
    assert list(rows["channel"]) == ["email", "sms"]
    assert [m["channel"] for m in queued] == (
        ["sms"] if rows["offer_id"].iloc[1] != "no_offer" else []
    )


def test_store_clerk_records_an_intent_every_channel_sees(deps: Deps, profiles: dict) -> None:
    ev = _event("purchase_intent", 120, channel="store", loyalty_id="LC-77", product_id="phone_x")
    res = actions.ingest(ev, deps)
    cid = res["customer_id"]
    basket = outbox.live_basket(cid, deps)
    assert basket["products"] == ["phone_x"] and basket["channel"] == "store"
    assert outbox.scan_abandoned(deps) == []  # the clerk follows up, not an e-mail robot
    bought = actions.ingest(
        _event("purchase", 1, channel="web", loyalty_id="LC-77", product_id="phone_x", value=499.0),
        deps,
    )
    assert bought["baskets_closed"] == 1


def test_intent_without_a_product_is_refused(deps: Deps) -> None:
    with pytest.raises(ValidationError, match="product_id"):
        actions.ingest(_event("purchase_intent", 1, channel="store", loyalty_id="LC-78"), deps)


def _queued(deps: Deps, profiles: dict, email: str) -> tuple[str, dict]:
    """A person with an abandoned basket and the e-mail queued for them (the seeded draw
    picks a real offer for this person)."""
    cid = _basket(deps, email, minutes_ago=90)
    profiles[cid] = profiles["c-post"]
    deps.settings.epsilon = 0.0
    (msg,) = outbox.scan_abandoned(deps)
    return cid, msg


def _status(deps: Deps, decision_id: str) -> str | None:
    return deps.ledger.decision(decision_id).status


def _shown_channels(deps: Deps, cid: str) -> list[str]:
    shown, _ = deps.ledger.contact_history(cid, now() - timedelta(days=1))
    return [s.channel for s in shown]


def test_a_message_decision_is_pending_then_sent_then_delivered(deps: Deps, profiles: dict) -> None:
    cid, msg = _queued(deps, profiles, "dora@example.com")
    did = msg["decision_id"]
    assert _status(deps, did) == "pending" and _shown_channels(deps, cid) == ["email"]
    assert [m["decision_id"] for m in outbox.pending(deps, "email")] == [did]  # claimed
    assert _status(deps, did) == "sent"
    receipt = actions.OutcomeRequest(idempotency_key="r1", decision_id=did, type="delivered")
    assert actions.record_outcome(receipt, deps).recorded is True
    assert actions.record_outcome(receipt, deps).recorded is False  # a retried receipt
    assert _status(deps, did) == "delivered"
    assert deps.ledger.counts()["outcomes"] == 0  # a receipt is not a customer's response


def test_a_cancelled_message_is_marked_gets_no_credit_and_no_cap(
    deps: Deps, profiles: dict
) -> None:
    from training.bandit_ledger import logged_examples

    cid, msg = _queued(deps, profiles, "erin@example.com")
    did = msg["decision_id"]
    ev = _event("purchase", 1, channel="store", email="erin@example.com", value=5.0)
    assert actions.ingest({**ev, "product_id": "data_10gb"}, deps)["messages_cancelled"] == 1
    assert _status(deps, did) == "cancelled"
    assert _shown_channels(deps, cid) == []  # nobody saw it: caps do not count it
    costs = {o.id: float(o.cost) for o in deps.offers()}
    learned = logged_examples(deps.ledger.logs(), deps.ledger.outcomes_frame(), costs, 30)
    assert did not in set(learned["decision_id"])
    receipt = actions.OutcomeRequest(idempotency_key="r1", decision_id=did, type="delivered")
    with pytest.raises(ValidationError, match="decision_id\n  its message was cancelled"):
        actions.record_outcome(receipt, deps)


@pytest.mark.parametrize("order_id", ["A-1", None])
def test_purchase_counted_once_across_event_and_outcome(deps: Deps, order_id: str | None) -> None:
    """A purchase event and a POST /outcome conversion of the same order are one order: with
    the caller's order id, or without one by customer, product, amount and minute."""
    from record.attribution import orders

    at = now().replace(second=10, microsecond=0) - timedelta(minutes=2)
    ev = {"ts": at.isoformat(), "channel": "store", "event_type": "purchase", "value": 50.0,
          "email": "fay@example.com", "product_id": "data_10gb", "order_id": order_id}  # fmt: skip
    res = actions.ingest({k: v for k, v in ev.items() if v is not None}, deps)
    conv = actions.OutcomeRequest(
        idempotency_key="k1", customer_id=res["customer_id"], type="conversion", value=50.0,
        offer_id="data_addon", order_id=order_id, ts=at + timedelta(seconds=30),
    )  # fmt: skip
    assert actions.record_outcome(conv, deps).order_id == res["order_id"]
    rows = deps.ledger.outcomes_frame()
    assert len(rows) == 2 and rows["order_id"].nunique() == 1
    (order,) = orders(rows).itertuples()
    assert (order.type, order.value, order.offer_id) == ("conversion", 50.0, "data_addon")


# --- the same trigger through the abandoned_basket journey, when that journey is active -------
def _basket_journey(deps: Deps, holdout_share: float = 0.0) -> None:
    """Make the shipped abandoned_basket journey active, with this holdout share."""
    import yaml

    from tests.serving.journey_fixtures import EXAMPLES

    data = yaml.safe_load((EXAMPLES / "abandoned_basket.yaml").read_text())
    data["rules"]["holdout_share"] = holdout_share
    folder = deps.settings.home / "journeys"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "abandoned_basket.yaml").write_text(yaml.safe_dump(data))


NOON = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # outside the e-mail's and SMS's quiet hours


def _abandoned(deps: Deps, profiles: dict, n: int, **profile: object) -> list[str]:
    """``n`` people who left a basket 90 minutes before noon, entered into the journey and
    run to its e-mail step (an hour after entering); their customer ids. The service's clock
    is noon."""
    from serving import journey_runner as jr
    from serving.journey_intents import enter_due_intents

    deps.settings.epsilon = 0.0
    deps.clock = lambda: NOON
    ts = (NOON - timedelta(minutes=90)).isoformat()
    ids = []
    for k in range(n):
        ev = {"ts": ts, "channel": "web", "event_type": "basket_add", "value": 5.0,
              "email": f"j{k}@example.com", "product_id": "data_10gb"}  # fmt: skip
        ids.append(actions.ingest(ev, deps)["customer_id"])
        profiles[ids[-1]] = {**profiles["c-post"], **profile}
    assert outbox.scan_abandoned(deps, NOON) == []  # the journey takes the trigger over
    assert enter_due_intents(deps, NOON) == n
    jr.run_due(deps, NOON)  # the banner, then the hour's wait
    jr.run_due(deps, NOON + timedelta(hours=1))  # the e-mail, then its wait_for
    return ids


def _messages(deps: Deps) -> list[dict]:
    with deps.ledger.engine.connect() as conn:
        from sqlalchemy import select

        from record.tables import outbox as table

        return [dict(r) for r in conn.execute(select(table)).mappings()]


def test_journey_emails_first_and_a_purchase_cancels(deps: Deps, profiles: dict) -> None:
    _basket_journey(deps)
    ids = _abandoned(deps, profiles, 6)
    sent = _messages(deps)
    assert sent and {m["channel"] for m in sent} == {"email"}  # e-mail first, no SMS yet
    assert {m["trigger"] for m in sent} == {"journey:abandoned_basket:email"}
    msg = sent[0]
    k = ids.index(msg["customer_id"])
    deps.clock = lambda: NOON + timedelta(hours=1, minutes=10)  # bought in store, by e-mail
    at = (NOON + timedelta(hours=1, minutes=5)).isoformat()  # written another way
    ev = {"ts": at, "channel": "store", "value": 5.0, "event_type": "purchase",
          "email": f"J{k}@example.com ", "product_id": "data_10gb"}  # fmt: skip
    res = actions.ingest(ev, deps)
    assert res["customer_id"] == msg["customer_id"] and res["journeys_ended"] == 1
    assert _status(deps, msg["decision_id"]) == "cancelled"
    assert msg["message_id"] not in {m["message_id"] for m in outbox.pending(deps, "email")}


def test_journey_texts_when_email_has_no_consent(deps: Deps, profiles: dict) -> None:
    """Through the journey the SMS follows the e-mail step's 24-hour wait for an open (the
    e-mail was skipped for want of consent, so nothing can be opened), not at once."""
    from serving import journey_runner as jr

    _basket_journey(deps)
    _abandoned(deps, profiles, 6, consent_email=False, consent_sms=True)
    assert _messages(deps) == []  # no e-mail consent: no e-mail
    jr.run_due(deps, NOON + timedelta(hours=26))
    sent = _messages(deps)
    assert sent and {m["channel"] for m in sent} == {"sms"}


def test_journey_holdout_gets_nothing(deps: Deps, profiles: dict) -> None:
    from serving import journey_runner as jr

    _basket_journey(deps, holdout_share=0.9)
    ids = _abandoned(deps, profiles, 6)
    jr.run_due(deps, NOON + timedelta(hours=26))
    held = [i for i in jr.instances(deps.ledger.engine) if i["arm"] == "holdout"]
    assert held and all(i["status"] == "holdout" and i["step_id"] is None for i in held)
    messaged = {m["customer_id"] for m in _messages(deps)}
    assert not messaged & {i["customer_id"] for i in held}
    logged = deps.ledger.logs()
    assert not set(logged.get("customer_id", [])) & {i["customer_id"] for i in held}
    assert len(ids) == 6
