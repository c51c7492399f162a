"""Act-on-intent entries on the ingest path: ``count`` events within ``within`` enter at once;
``idle`` queues an entry that an ``unless`` event cancels and a later matching event pushes
back; due entries are entered by ``enter_due_intents`` through the runner's ``enter``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from journeys.intent_state import journey_intent_events, journey_pending_entries
from record.tables import now, utc
from serving import actions
from serving import journey_runner as jr
from serving.deps import Deps
from serving.journey_intents import enter_due_intents
from tests.serving.journey_fixtures import activate

BROWSER = """
name: browser
offers: [device_upgrade]
entry: {type: intent, event: product_view, channels: [web], count: 3, within: 1d}
rules: {holdout_share: 0.0}
steps:
  - {id: banner, type: message, channel: web}
"""


def _ingest(deps: Deps, kind: str, at: object, **kw: object) -> dict:
    ev = {"ts": at.isoformat(), "event_type": kind, "channel": "web", **kw}
    return actions.ingest(ev, deps)


def _instances(deps: Deps, customer_id: str) -> list[dict]:
    return jr.instances(deps.ledger.engine, customer_id)


def test_three_views_within_a_day_enter_at_once(deps: Deps) -> None:
    folder = Path(deps.settings.home) / "journeys"
    folder.mkdir(parents=True)
    (folder / "browser.yaml").write_text(BROWSER)
    t = now() - timedelta(hours=1)
    view = {"cookie_id": "ck-v", "product_id": "phone_upgrade_24m"}
    cid = _ingest(deps, "product_view", t - timedelta(days=2), **view)["customer_id"]  # too old
    _ingest(deps, "product_view", t - timedelta(hours=3), **view)
    _ingest(deps, "product_view", t - timedelta(hours=2), **{**view, "channel": "app"})  # not web
    again = {**view, "event_id": "view-x"}
    _ingest(deps, "product_view", t - timedelta(hours=1), **again)
    assert (
        _ingest(deps, "product_view", t - timedelta(hours=1), **again).get("journeys_entered")
        is None
    )  # the same event twice counts once
    assert _instances(deps, cid) == []
    res = _ingest(deps, "product_view", t, **view)
    assert res["journeys_entered"] == 1
    (inst,) = _instances(deps, cid)
    assert inst["journey"] == "browser" and inst["context"]["product_id"] == "phone_upgrade_24m"
    with deps.ledger.engine.connect() as conn:  # the count starts over
        assert conn.execute(select(journey_intent_events)).first() is None


def test_an_idle_basket_enters_unless_checked_out(deps: Deps) -> None:
    activate(deps)
    t = now()
    ago = t - timedelta(minutes=90)
    left = _ingest(deps, "basket_add", ago, email="left@example.com", product_id="data_10gb",
                   value=5.0)  # fmt: skip
    assert left["entries_pending"] == 1
    bought = _ingest(deps, "basket_add", ago, email="bought@example.com",
                     product_id="data_10gb", value=5.0)  # fmt: skip
    res = _ingest(deps, "checkout", ago + timedelta(minutes=10), email="bought@example.com")
    assert res["entries_cancelled"] == 1
    later = _ingest(deps, "basket_add", ago, email="later@example.com", product_id="data_10gb",
                    value=5.0)  # fmt: skip
    _ingest(
        deps,
        "basket_add",
        t - timedelta(minutes=20),
        email="later@example.com",
        product_id="streaming_plus",
        value=9.0,
    )  # fmt: skip: a new add restarts the hour
    assert enter_due_intents(deps, t) == 1
    (inst,) = _instances(deps, left["customer_id"])
    assert utc(inst["entered_at"]) == ago + timedelta(minutes=60)  # entered when the hour ran out
    assert inst["context"]["product_id"] == "data_10gb"
    assert inst["context"]["basket"] == ["data_10gb"]  # the live basket, for the messages
    assert _instances(deps, bought["customer_id"]) == []
    assert _instances(deps, later["customer_id"]) == []
    assert enter_due_intents(deps, t + timedelta(minutes=41)) == 1
    (inst,) = _instances(deps, later["customer_id"])
    assert inst["context"]["product_id"] == "streaming_plus"
    with deps.ledger.engine.connect() as conn:
        assert conn.execute(select(journey_pending_entries)).first() is None
