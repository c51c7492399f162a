"""Feature views: the names and types of every feature, defined once here.

Batch views read the point-in-time snapshots; ``customer_realtime`` is fed by pushes from
``features.ingest`` (and by the snapshots for history); ``customer_basket_live`` derives the
time-dependent basket fields at request time, so training and serving compute them the same way.
"""

from typing import Any

from feast import FeatureView, Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Bool, Float64, Int64, String, UnixTimestamp

from features.events import CONSENT_CHANNELS, VISIT_CHANNELS
from features.repo.data_sources import (
    customer_realtime_push,
    customer_segments_source,
    customer_snapshots,
    customer_value_snapshots,
    decision_time,
)
from features.repo.entities import customer

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    schema=[
        Field(name="plan", dtype=String),
        Field(name="arpu", dtype=Float64),
        Field(name="tenure_days", dtype=Int64),
        Field(name="months_left_on_contract", dtype=Float64),
    ],
    source=customer_snapshots,
    online=True,
    description="contract profile as of the snapshot (plan, ARPU: the CRM history's row then)",
)

customer_consent = FeatureView(
    name="customer_consent",
    entities=[customer],
    schema=[Field(name=f"consent_{c}", dtype=Bool) for c in CONSENT_CHANNELS],
    source=customer_snapshots,
    online=True,
    description="latest consent_change per channel before the snapshot, else the CRM default",
)

customer_activity = FeatureView(
    name="customer_activity",
    entities=[customer],
    schema=[
        *(Field(name=f"purchases_{d}d", dtype=Int64) for d in (7, 30, 90)),
        *(Field(name=f"spend_{d}d", dtype=Float64) for d in (7, 30, 90)),
        *(Field(name=f"visits_{c}_30d", dtype=Int64) for c in VISIT_CHANNELS),
        Field(name="emails_sent_90d", dtype=Int64),
        Field(name="email_open_rate_90d", dtype=Float64),
        Field(name="email_click_rate_90d", dtype=Float64),
        Field(name="sms_sent_90d", dtype=Int64),
        Field(name="sms_click_rate_90d", dtype=Float64),
        Field(name="complaints_90d", dtype=Int64),
        Field(name="usage_last_month", dtype=Float64),
        Field(name="usage_prev_month", dtype=Float64),
        Field(name="usage_trend", dtype=Float64),
    ],
    source=customer_snapshots,
    online=True,
    description="windowed counts and rates; windows end just before the snapshot time",
)

customer_segments = FeatureView(
    name="customer_segments",
    entities=[customer],
    schema=[
        Field(name="rfm_segment", dtype=String),
        Field(name="rfm_score", dtype=String),
        Field(name="recency_days", dtype=Float64),
        Field(name="frequency_365d", dtype=Int64),
        Field(name="monetary_365d", dtype=Float64),
        Field(name="cluster_id", dtype=Int64),
        Field(name="cluster", dtype=String),
        Field(name="preferred_channel", dtype=String),
    ],
    source=customer_segments_source,
    online=True,
    description="segments as of the latest snapshot; cluster ids stable across refreshes",
)

customer_value = FeatureView(
    name="customer_value",
    entities=[customer],
    schema=[
        Field(name="clv_12m", dtype=Float64),
        Field(name="p_alive", dtype=Float64),
        Field(name="expected_purchases_12m", dtype=Float64),
        Field(name="value_tier", dtype=String),
    ],
    source=customer_value_snapshots,
    online=True,
    description="expected spend and purchase days in the next 12 months, P(alive), value tier "
    "(the promoted CLV model's output as of its training day)",
)

customer_realtime = FeatureView(
    name="customer_realtime",
    entities=[customer],
    schema=[
        Field(name="basket_items", dtype=Int64),
        Field(name="basket_value", dtype=Float64),
        Field(name="basket_updated_at", dtype=UnixTimestamp),
        Field(name="last_visit_at", dtype=UnixTimestamp),
        Field(name="last_channel", dtype=String),
    ],
    source=customer_realtime_push,
    online=True,
    description="open basket and last visit, pushed per event by features.ingest",
)


@on_demand_feature_view(
    sources=[customer_realtime, decision_time],
    schema=[
        Field(name="basket_minutes_since_change", dtype=Float64),
        Field(name="basket_abandoned", dtype=Bool),
    ],
    mode="python",
    description="minutes since the basket last changed, and whether it counts as abandoned",
)
def customer_basket_live(inputs: dict[str, Any]) -> dict[str, Any]:
    # Feast stores this function's source and execs it alone: keep it self-contained.
    from datetime import UTC, datetime

    def utc(value: Any) -> datetime | None:
        """Online reads give datetimes (naive = UTC); offline ones may give epoch numbers."""
        if value is None:
            return None
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, tz=UTC)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    abandon_after = 60.0  # minutes untouched before a non-empty basket counts as abandoned
    minutes: list[float | None] = []
    abandoned: list[bool] = []
    for items, changed, now in zip(
        inputs["basket_items"], inputs["basket_updated_at"], inputs["request_ts"], strict=True
    ):
        changed_at, now_at = utc(changed), utc(now)
        if changed_at is None or now_at is None or changed_at.year < 1971:
            minutes.append(None)  # no basket change on record
            abandoned.append(False)
            continue
        gap = max((now_at - changed_at).total_seconds() / 60.0, 0.0)
        minutes.append(gap)
        abandoned.append(bool((items or 0) > 0 and gap >= abandon_after))
    return {"basket_minutes_since_change": minutes, "basket_abandoned": abandoned}
