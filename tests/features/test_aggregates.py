"""Point-in-time correctness: a snapshot at T must not see any event at or after T."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.aggregates import batch_features, realtime_features, snapshot_times
from features.build import CONSENT_DEFAULTS
from features.events import CONSENT_CHANNELS

T = pd.Timestamp("2026-02-01", tz="UTC")
KEYS = ["customer_id", "event_timestamp"]


def _events(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in ("value", "quantity", "consent_channel", "consent_value"):
        if col not in frame:
            frame[col] = None
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def _profile(**extra: list) -> pd.DataFrame:
    base = {
        "customer_id": ["a"],
        "plan": ["postpaid_m"],
        "arpu": [27.0],
        "tenure_start": [pd.Timestamp("2025-01-01", tz="UTC")],
        "contract_end": [pd.Timestamp("2026-08-01", tz="UTC")],
        **{f"consent_default_{c}": [CONSENT_DEFAULTS[c]] for c in CONSENT_CHANNELS},
    }
    return pd.DataFrame({**base, **extra})


def _one_of_each(at: pd.Timestamp) -> list[dict]:
    """An event for every feature family at ``at``; the basket add 1 us later, so the purchase
    (which empties the basket) comes first."""
    e = {"customer_id": "a", "ts": at}
    later = {"customer_id": "a", "ts": at + pd.Timedelta(microseconds=1)}
    return [
        {**e, "channel": "web", "event_type": "purchase", "value": 50.0},
        {**e, "channel": "app", "event_type": "session_start"},
        {**e, "channel": "store", "event_type": "store_visit"},
        {**e, "channel": "call_centre", "event_type": "call_contact"},
        {**e, "channel": "email", "event_type": "email_send"},
        {**e, "channel": "email", "event_type": "email_open"},
        {**e, "channel": "sms", "event_type": "sms_send"},
        {**e, "channel": "sms", "event_type": "sms_click"},
        {**e, "channel": "call_centre", "event_type": "complaint"},
        {**e, "channel": "app", "event_type": "usage", "value": 9.0},
        {
            **e,
            "channel": "email",
            "event_type": "consent_change",
            "consent_channel": "email",
            "consent_value": True,
        },
        {**later, "channel": "web", "event_type": "basket_add", "value": 30.0, "quantity": 3},
    ]


HISTORY = [
    {
        "customer_id": "a",
        "ts": "2026-01-10",
        "channel": "web",
        "event_type": "purchase",
        "value": 10.0,
    },
    {"customer_id": "a", "ts": "2026-01-12", "channel": "web", "event_type": "session_start"},
    {"customer_id": "a", "ts": "2026-01-05", "channel": "app", "event_type": "usage", "value": 4.0},
    {"customer_id": "a", "ts": "2025-12-05", "channel": "app", "event_type": "usage", "value": 5.0},
    {
        "customer_id": "a",
        "ts": "2026-01-20",
        "channel": "web",
        "event_type": "basket_add",
        "value": 20.0,
        "quantity": 1,
    },
]


def _features(rows: list[dict], profile: pd.DataFrame | None = None) -> pd.DataFrame:
    events, profile = _events(rows), _profile() if profile is None else profile
    batch = batch_features(events, profile, [T]).set_index(KEYS)
    real = realtime_features(events, profile, [T]).set_index(KEYS)
    return batch.join(real)


def test_events_at_or_after_t_are_invisible() -> None:
    base = _features(HISTORY)
    for at in (T, T + pd.Timedelta(microseconds=1), T + pd.Timedelta(days=3)):
        pd.testing.assert_frame_equal(_features(HISTORY + _one_of_each(at)), base)


def test_events_just_before_t_change_every_family() -> None:
    """The control that makes the test above able to fail: the same events 1 us earlier count."""
    base = _features(HISTORY).iloc[0]
    seen = _features(HISTORY + _one_of_each(T - pd.Timedelta(microseconds=2))).iloc[0]
    changed = {
        c for c in base.index if not (base[c] == seen[c] or (pd.isna(base[c]) and pd.isna(seen[c])))
    }
    expected = {
        "purchases_7d",
        "purchases_30d",
        "purchases_90d",
        "spend_7d",
        "spend_30d",
        "spend_90d",
        "visits_app_30d",
        "visits_store_30d",
        "visits_call_centre_30d",
        "emails_sent_90d",
        "email_open_rate_90d",
        "sms_sent_90d",
        "sms_click_rate_90d",
        "complaints_90d",
        "usage_last_month",
        "usage_trend",
        "consent_email",
        "basket_items",
        "basket_value",
        "basket_updated_at",
        "last_visit_at",
        "last_channel",
    }
    assert expected <= changed, expected - changed
    assert (seen["basket_items"], seen["basket_value"]) == (3, 30.0)  # purchase emptied it first
    assert seen["consent_email"] and not base["consent_email"]  # default False, then opt-in


def test_windows_and_basket_rules() -> None:
    rows = HISTORY + [
        {
            "customer_id": "a",
            "ts": "2026-01-21",
            "channel": "web",
            "event_type": "basket_remove",
            "value": 5.0,
            "quantity": 1,
        },
        {
            "customer_id": "a",
            "ts": "2025-10-01",
            "channel": "web",
            "event_type": "purchase",
            "value": 99.0,
        },  # outside 90 days
    ]
    f = _features(rows).iloc[0]
    assert (f["purchases_7d"], f["purchases_30d"], f["purchases_90d"]) == (0, 1, 1)
    assert f["spend_90d"] == 10.0
    assert (f["usage_last_month"], f["usage_prev_month"]) == (4.0, 5.0)
    assert f["usage_trend"] == pytest.approx(4.0 / 5.0 - 1.0)
    assert (f["basket_items"], f["basket_value"]) == (0, 15.0)
    assert f["basket_updated_at"] == pd.Timestamp("2026-01-21", tz="UTC")
    assert f["tenure_days"] == (T - pd.Timestamp("2025-01-01", tz="UTC")).days
    cleared = _features(
        rows
        + [{"customer_id": "a", "ts": "2026-01-25", "channel": "web", "event_type": "checkout"}]
    ).iloc[0]
    assert (cleared["basket_items"], cleared["basket_value"]) == (0, 0.0)
    assert pd.isna(cleared["basket_updated_at"])


def test_contract_end_before_a_renewal_is_the_prior_one() -> None:
    profile = _profile(
        prior_contract_end=[pd.Timestamp("2026-03-01", tz="UTC")],
        renewed_at=[pd.Timestamp("2026-02-15", tz="UTC")],
    )
    times = [T, pd.Timestamp("2026-03-01", tz="UTC")]
    out = batch_features(_events(HISTORY), profile, times).set_index("event_timestamp")
    months = out["months_left_on_contract"]
    assert months[T] == pytest.approx(28 / 30.4375)  # Feb 1 -> Mar 1, the end known then
    assert months[times[1]] == pytest.approx(153 / 30.4375)  # Mar 1 -> Aug 1, renewed


# A customer on postpaid_m (27.00) since sign-up moves up to postpaid_l (40.00) on Feb 10 and
# sees a bolt-on drop on Mar 1; today's CRM extract (the profile) holds the latest values.
PLAN_HISTORY = pd.DataFrame(
    {
        "customer_id": ["a", "a", "a"],
        "valid_from": pd.to_datetime(["2025-01-01", "2026-02-10", "2026-03-01"], utc=True),
        "plan": ["postpaid_m", "postpaid_l", "postpaid_l"],
        "arpu": [27.0, 40.0, 36.5],
    }
)


@pytest.mark.parametrize(
    ("at", "plan", "arpu"),
    [
        ("2026-02-01", "postpaid_m", 27.0),  # before the upgrade: the old plan
        ("2026-02-10", "postpaid_m", 27.0),  # the upgrade at exactly T is the future
        ("2026-02-10 00:00:01", "postpaid_l", 40.0),
        ("2026-02-15", "postpaid_l", 40.0),
        ("2026-03-08", "postpaid_l", 36.5),  # ARPU drifts without a plan change
    ],
)
def test_plan_and_arpu_at_t_are_the_ones_valid_before_t(at: str, plan: str, arpu: float) -> None:
    """Item 13: a later plan or ARPU never leaks into an earlier snapshot."""
    profile = _profile(plan=["postpaid_l"], arpu=[36.5])  # today's extract
    t = pd.Timestamp(at, tz="UTC")
    row = batch_features(_events(HISTORY), profile, [t], PLAN_HISTORY).iloc[0]
    assert (row["plan"], row["arpu"]) == (plan, arpu)


def test_without_a_plan_history_the_profile_holds_at_every_t() -> None:
    times = [T, pd.Timestamp("2026-03-08", tz="UTC")]
    out = batch_features(_events(HISTORY), _profile(), times)
    assert list(out["plan"]) == ["postpaid_m"] * 2 and list(out["arpu"]) == [27.0] * 2


def test_snapshot_times_are_weekly_plus_final_day() -> None:
    times = snapshot_times(
        pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-31", tz="UTC")
    )
    assert [t.day for t in times] == [8, 15, 22, 29, 31]


def test_world_snapshot_equals_one_from_the_log_truncated_at_t(feature_home) -> None:  # noqa: ANN001
    """Recompute every snapshot from only the events and plan changes before it: identical
    frames (the profile passed is today's extract, whose plan and ARPU must not show)."""
    from features.ingest import read_event_log

    events = read_event_log(feature_home.settings)
    profile = pd.read_parquet(feature_home.build["profile_file"])
    plans = pd.read_parquet(feature_home.build["plans_file"])
    full_b, full_r = feature_home.batch(), feature_home.realtime()
    times = [pd.Timestamp(t) for t in feature_home.build["snapshots"]]
    assert (plans["valid_from"] >= times[0]).any()  # plans change inside the window
    for t in times[:-1]:
        cut = events[events["ts"] < t]
        assert len(cut) < len(events)  # there is a future to leak
        b = batch_features(cut, profile, [t], plans[plans["valid_from"] < t])
        b = b.reset_index(drop=True)
        r = realtime_features(cut, profile, [t]).reset_index(drop=True)
        pd.testing.assert_frame_equal(
            b, full_b[full_b["event_timestamp"] == t].reset_index(drop=True), check_dtype=False
        )
        pd.testing.assert_frame_equal(
            r, full_r[full_r["event_timestamp"] == t].reset_index(drop=True), check_dtype=False
        )


def test_world_counts_match_a_brute_force_count(feature_home) -> None:  # noqa: ANN001
    """Windowed counts for a sample of customers, recounted the slow obvious way."""
    from features.ingest import read_event_log

    events = read_event_log(feature_home.settings)
    batch = feature_home.batch()
    t = pd.Timestamp(feature_home.build["snapshots"][-1])
    rows = batch[batch["event_timestamp"] == t].set_index("customer_id")
    rng = np.random.default_rng(0)
    for cid in rng.choice(rows.index, 25, replace=False):
        mine = events[(events["customer_id"] == cid) & (events["ts"] < t)]
        last30 = mine[mine["ts"] >= t - pd.Timedelta(days=30)]
        buys = last30[last30["event_type"] == "purchase"]
        assert rows.loc[cid, "purchases_30d"] == len(buys)
        assert rows.loc[cid, "spend_30d"] == pytest.approx(buys["value"].sum())
        web = last30[(last30["event_type"] == "session_start") & (last30["channel"] == "web")]
        assert rows.loc[cid, "visits_web_30d"] == len(web)


def test_a_customer_who_joins_in_the_window_has_features_from_sign_up(feature_home) -> None:  # noqa: ANN001
    """New customers (simulator.joiners) have no row before signing up, then a tenure in days
    since it."""
    profile = pd.read_parquet(feature_home.build["profile_file"]).set_index("customer_id")
    times = [pd.Timestamp(t) for t in feature_home.build["snapshots"]]
    joined = profile[profile["tenure_start"] >= pd.Timestamp("2026-01-01", tz="UTC")]
    assert len(joined) > 0
    batch = feature_home.batch()
    for cid, start in joined["tenure_start"].items():
        rows = batch[batch["customer_id"] == cid].set_index("event_timestamp")
        assert list(rows.index) == [t for t in times if t > start]
        days = [(t.normalize() - start.normalize()).days for t in rows.index]
        assert rows["tenure_days"].tolist() == days
