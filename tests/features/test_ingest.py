"""The real-time path's rules: live state per event, the same as the batch computation."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from features.aggregates import realtime_features
from features.events import InvalidEvent, parse_event
from features.ingest import REALTIME_FIELDS, append_event, next_state, read_event_log

T0 = datetime(2026, 2, 1, 12, tzinfo=UTC)
EMPTY = dict.fromkeys(REALTIME_FIELDS)


def _ev(event_type: str, channel: str = "web", **kw: object) -> object:
    return parse_event(
        {
            "ts": kw.pop("ts", T0),
            "channel": channel,
            "event_type": event_type,
            "customer_id": "c1",
            **kw,
        }
    )


STEPS = [
    ("basket_add", {"value": 20.0, "quantity": 2}, {"basket_items": 2, "basket_value": 20.0}),
    ("basket_remove", {"value": 10.0, "quantity": 1}, {"basket_items": 1, "basket_value": 10.0}),
    ("basket_remove", {"value": 50.0, "quantity": 5}, {"basket_items": 0, "basket_value": 0.0}),
    ("checkout", {}, {"basket_items": 0, "basket_updated_at": None}),
    ("session_start", {}, {"last_channel": "web", "last_visit_at": T0}),
]


@pytest.mark.parametrize(("event_type", "fields", "expect"), STEPS)
def test_next_state_rules(event_type: str, fields: dict, expect: dict) -> None:
    start = {**EMPTY, "basket_items": 2, "basket_value": 20.0, "basket_updated_at": T0}
    if event_type == "basket_add":
        start = EMPTY
    new = next_state(start, _ev(event_type, **fields))
    assert new is not None
    for key, value in expect.items():
        assert new[key] == value, key


def test_events_outside_the_realtime_view_do_not_push() -> None:
    assert next_state(EMPTY, _ev("product_view")) is None
    assert next_state(EMPTY, _ev("email_open", channel="email")) is None


def test_live_replay_equals_the_batch_state(feature_home) -> None:  # noqa: ANN001
    """Feed each customer's logged events through the live rules: the end state is the batch
    real-time row at the final snapshot (same rules on both paths)."""
    home = feature_home
    t = pd.Timestamp(home.build["snapshots"][-1])
    log = read_event_log(home.settings)
    log = log[log["ts"] < t]
    profile = pd.read_parquet(home.build["profile_file"])
    batch = realtime_features(log, profile, [t]).set_index("customer_id")
    busy = log[log["event_type"].isin(["basket_add", "basket_remove"])]["customer_id"].unique()
    busy = [c for c in busy if c in batch.index]  # batch rows cover CRM customers only
    assert len(busy) >= 10
    for cid in busy[:40]:
        state = dict(EMPTY)
        for rec in log[log["customer_id"] == cid].to_dict("records"):
            rec = {k: v for k, v in rec.items() if not (v is None or v is pd.NA or v != v)}
            rec["ts"] = rec["ts"].to_pydatetime()
            state = next_state(state, parse_event(rec)) or state
        want = batch.loc[cid]
        assert state["basket_items"] == want["basket_items"], cid
        assert state["basket_value"] == pytest.approx(want["basket_value"], abs=1e-6), cid
        assert pd.Timestamp(state["basket_updated_at"]) == want["basket_updated_at"] or (
            state["basket_updated_at"] is None and pd.isna(want["basket_updated_at"])
        ), cid
        assert state["last_channel"] == want["last_channel"] or pd.isna(want["last_channel"])


def test_bad_event_is_rejected_before_anything_is_written(feature_home) -> None:  # noqa: ANN001
    from features.identity import graph_for
    from features.ingest import ingest_event

    home = feature_home
    before = len(read_event_log(home.settings))
    bad = {
        "ts": "2026-02-01T00:00:00",
        "channel": "web",
        "event_type": "basket_add",
        "email": "x@y.example",
        "value": 1.0,
    }
    with pytest.raises(InvalidEvent, match="^ts: must carry a timezone"):
        ingest_event(bad, store=home.store, graph=graph_for(home.settings), settings=home.settings)
    assert len(read_event_log(home.settings)) == before


def test_event_log_append_is_idempotent(tmp_path) -> None:  # noqa: ANN001
    from nextbest.settings import Settings

    settings = Settings(home=tmp_path)
    event = _ev("session_start", event_id="e-1")
    append_event(settings, event, "c1")
    append_event(settings, event, "c1")
    log = read_event_log(settings)
    assert list(log["event_id"]) == ["e-1"]
    assert str(log["ts"].dtype) == "datetime64[us, UTC]"
    assert log.iloc[0]["ts"] == pd.Timestamp(T0)


def _retry_event(email: str, event_id: str) -> dict:
    return {"event_id": event_id, "ts": datetime.now(UTC).isoformat(), "channel": "web",
            "event_type": "basket_add", "email": email, "product_id": "data_10gb",
            "value": 5.0}  # fmt: skip


def test_a_failed_push_is_raised_and_the_retry_pushes_it_once(feature_home, monkeypatch) -> None:  # noqa: ANN001
    """The online store down for the first try: the error reaches the caller (nothing says
    applied), the event is logged once, and the retry pushes it; a third copy changes nothing."""
    import features.ingest as ingest
    from features.identity import graph_for

    home, real = feature_home, ingest.push_realtime
    calls = {"n": 0}

    def flaky(*args: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("Redis is down")
        real(*args, **kw)

    monkeypatch.setattr(ingest, "push_realtime", flaky)
    graph, ev = graph_for(home.settings), _retry_event("retry@example.com", "retry-push-1")
    with pytest.raises(ConnectionError, match="Redis is down"):
        ingest.ingest_event(ev, store=home.store, graph=graph, settings=home.settings)
    second = ingest.ingest_event(ev, store=home.store, graph=graph, settings=home.settings)
    third = ingest.ingest_event(ev, store=home.store, graph=graph, settings=home.settings)
    assert (second["pushed"], third["pushed"]) == (True, False)
    assert ingest.read_realtime(home.store, second["customer_id"])["basket_items"] == 1
    log = read_event_log(home.settings)
    assert (log["event_id"] == "retry-push-1").sum() == 1


def test_an_event_being_pushed_elsewhere_is_not_acknowledged(feature_home) -> None:  # noqa: ANN001
    """Two copies at once (two workers): the second finds the first one's claim on the push and
    says so (a retry later finds it done) rather than pushing it twice or calling it applied."""
    import features.ingest as ingest
    from features.identity import graph_for

    home = feature_home
    graph, ev = graph_for(home.settings), _retry_event("busy@example.com", "retry-busy-1")
    event = parse_event(ev)
    assert append_event(home.settings, event, "busy-customer")  # logged, push not yet made
    assert ingest.claim_push(home.settings, event.event_id)  # another request is pushing it
    with pytest.raises(ingest.PushInProgress, match="retry-busy-1"):
        ingest.ingest_event(ev, store=home.store, graph=graph, settings=home.settings)
