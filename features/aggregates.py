"""Batch aggregates at snapshot times, point-in-time correct: a row as of time T uses only
events with ``ts < T`` (an event at exactly T is the future). One DuckDB query per table, no
per-customer Python loops, so 10k customers x 13 snapshots stays a few seconds.

Inputs are plain frames: ``events`` (customer_id, ts, channel, event_type, value, quantity,
consent_channel, consent_value), ``profile`` (customer_id, plan, arpu, tenure_start,
contract_end, optionally ``prior_contract_end``/``renewed_at``, and one
``consent_default_<channel>`` column per consent channel), optionally ``plans`` (the CRM's plan
history: customer_id, valid_from, plan, arpu) and the snapshot times. Outputs match the Feast
views in ``features/repo`` column for column.

Plan and ARPU at T are the history's last row with ``valid_from < T``: the profile's own plan
and ARPU are today's, and stamping them on past snapshots would show a model the future. Only
without a history (an extract that has none) do the profile's values hold at every T.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd

from features.events import BASKET_CLEARING_TYPES, CONSENT_CHANNELS, VISIT_CHANNELS, VISIT_TYPES

DAYS_PER_MONTH = 30.4375
ACTIVITY_TYPES = (
    "purchase",
    *VISIT_TYPES,
    "email_send",
    "email_open",
    "email_click",
    "sms_send",
    "sms_click",
    "complaint",
    "usage",
)
EVENT_FRAME_COLUMNS = (
    "customer_id",
    "ts",
    "channel",
    "event_type",
    "value",
    "quantity",
    "consent_channel",
    "consent_value",
)


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def snapshot_times(
    start: pd.Timestamp, end: pd.Timestamp, every_days: int = 7
) -> list[pd.Timestamp]:
    """Weekly snapshot times after ``start`` plus ``end`` itself (the final day's state)."""
    times = list(pd.date_range(start + pd.Timedelta(days=every_days), end, freq=f"{every_days}D"))
    if not times or times[-1] < end:
        times.append(end)
    return [pd.Timestamp(t).tz_convert("UTC") for t in times]


PLAN_HISTORY_COLUMNS = ("customer_id", "valid_from", "plan", "arpu")
_SINCE_EVER = pd.Timestamp("1900-01-01", tz="UTC")


def _plan_history(profile: pd.DataFrame, plans: pd.DataFrame | None) -> pd.DataFrame:
    """The plan history to read as of T; without one, the profile's values since ever."""
    if plans is None:
        hist = profile[["customer_id", "plan", "arpu"]].assign(valid_from=_SINCE_EVER)
    else:
        hist = plans.loc[plans["customer_id"].notna()]
    hist = hist[list(PLAN_HISTORY_COLUMNS)].copy()
    hist["valid_from"] = pd.to_datetime(hist["valid_from"], utc=True).astype("datetime64[us, UTC]")
    hist["arpu"] = hist["arpu"].astype("float64")
    return hist


def _connect(
    events: pd.DataFrame,
    profile: pd.DataFrame,
    times: Sequence[pd.Timestamp],
    plans: pd.DataFrame | None = None,
):
    """A DuckDB connection with the inputs registered, in UTC."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    ev = events.loc[events["customer_id"].notna(), list(EVENT_FRAME_COLUMNS)].copy()
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True).astype("datetime64[us, UTC]")
    ev["quantity"] = ev["quantity"].fillna(1).astype("int64")
    ev["value"] = ev["value"].astype("float64")
    snaps = pd.DataFrame({"T": pd.to_datetime(list(times), utc=True).astype("datetime64[us, UTC]")})
    prof = profile.copy()
    for col in ("tenure_start", "contract_end", "prior_contract_end", "renewed_at"):
        if col not in prof:  # contract history is optional: without it the end date is static
            prof[col] = pd.NaT
        prof[col] = pd.to_datetime(prof[col], utc=True).astype("datetime64[us, UTC]")
    con.register("ev", ev)
    con.register("snaps", snaps)
    con.register("prof", prof)
    con.register("hist", _plan_history(profile, plans))
    return con


def _activity_sql() -> str:
    """Windowed counts per (customer, T); windows are [T - d, T)."""

    def within(days: int) -> str:
        return f"ts >= T - INTERVAL {days} DAY"

    cols = []
    for d in (7, 30, 90):
        cols.append(
            f"count(*) FILTER (WHERE event_type = 'purchase' AND {within(d)}) AS purchases_{d}d"
        )
        cols.append(
            f"coalesce(sum(value) FILTER (WHERE event_type = 'purchase' AND {within(d)}), 0)"
            f" AS spend_{d}d"
        )
    for c in VISIT_CHANNELS:
        cols.append(
            f"count(*) FILTER (WHERE event_type IN ({_sql_list(VISIT_TYPES)}) AND channel = '{c}'"
            f" AND {within(30)}) AS visits_{c}_30d"
        )
    for t in ("email_send", "email_open", "email_click", "sms_send", "sms_click", "complaint"):
        cols.append(f"count(*) FILTER (WHERE event_type = '{t}') AS n_{t}")
    cols.append(
        f"coalesce(sum(value) FILTER (WHERE event_type = 'usage' AND {within(30)}), 0)"
        " AS usage_last_month"
    )
    cols.append(
        "coalesce(sum(value) FILTER (WHERE event_type = 'usage' AND ts < T - INTERVAL 30 DAY"
        f" AND {within(60)}), 0) AS usage_prev_month"
    )
    return f"""
        SELECT e.customer_id, s.T, {", ".join(cols)}
        FROM (SELECT * FROM ev WHERE event_type IN ({_sql_list(ACTIVITY_TYPES)})) e
        JOIN snaps s ON e.ts < s.T AND e.ts >= s.T - INTERVAL 90 DAY
        GROUP BY e.customer_id, s.T"""


def batch_features(
    events: pd.DataFrame,
    profile: pd.DataFrame,
    times: Sequence[pd.Timestamp],
    plans: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (customer, snapshot time): profile, consent and activity features; plan
    and ARPU as the ``plans`` history held them just before T (see the module docstring)."""
    con = _connect(events, profile, times, plans)
    consent_cols = ", ".join(
        f"coalesce(c.v_{ch}, p.consent_default_{ch}) AS consent_{ch}" for ch in CONSENT_CHANNELS
    )
    consent_pivot = ", ".join(
        f"bool_or(v) FILTER (WHERE consent_channel = '{ch}') AS v_{ch}" for ch in CONSENT_CHANNELS
    )
    rate = "CASE WHEN a.n_{s} > 0 THEN least(a.n_{x} / a.n_{s}, 1.0) ELSE 0.0 END"
    counts = [f"purchases_{d}d" for d in (7, 30, 90)] + [f"visits_{c}_30d" for c in VISIT_CHANNELS]
    sums = [f"spend_{d}d" for d in (7, 30, 90)] + ["usage_last_month", "usage_prev_month"]
    query = f"""
    WITH grid AS (
        SELECT p.* EXCLUDE (plan, arpu), s.T FROM prof p CROSS JOIN snaps s
        WHERE p.tenure_start IS NULL OR p.tenure_start < s.T
    ),
    plan_at AS (
        SELECT g.customer_id, g.T, h.plan, h.arpu
        FROM (SELECT customer_id, T FROM grid) g
        ASOF JOIN hist h ON h.customer_id = g.customer_id AND g.T > h.valid_from
    ),
    latest_consent AS (
        SELECT e.customer_id, s.T, e.consent_channel, arg_max(e.consent_value, e.ts) AS v
        FROM ev e JOIN snaps s ON e.ts < s.T
        WHERE e.event_type = 'consent_change'
        GROUP BY e.customer_id, s.T, e.consent_channel
    ),
    c AS (
        SELECT customer_id, T, {consent_pivot} FROM latest_consent GROUP BY customer_id, T
    ),
    a AS ({_activity_sql()})
    SELECT p.customer_id, p.T AS event_timestamp,
        h.plan, h.arpu,
        CAST(date_diff('day', p.tenure_start, p.T) AS BIGINT) AS tenure_days,
        greatest(epoch(CASE WHEN p.renewed_at IS NOT NULL AND p.renewed_at >= p.T
                            THEN p.prior_contract_end ELSE p.contract_end END - p.T)
                 / 86400.0 / {DAYS_PER_MONTH}, 0.0) AS months_left_on_contract,
        {consent_cols},
        {", ".join(f"coalesce(a.{x}, 0) AS {x}" for x in counts + sums)},
        coalesce(a.n_email_send, 0) AS emails_sent_90d,
        {rate.format(s="email_send", x="email_open")} AS email_open_rate_90d,
        {rate.format(s="email_send", x="email_click")} AS email_click_rate_90d,
        coalesce(a.n_sms_send, 0) AS sms_sent_90d,
        {rate.format(s="sms_send", x="sms_click")} AS sms_click_rate_90d,
        coalesce(a.n_complaint, 0) AS complaints_90d,
        CASE WHEN coalesce(a.usage_prev_month, 0) > 0
             THEN a.usage_last_month / a.usage_prev_month - 1.0 ELSE NULL END AS usage_trend
    FROM grid p
    LEFT JOIN plan_at h ON h.customer_id = p.customer_id AND h.T = p.T
    LEFT JOIN c ON c.customer_id = p.customer_id AND c.T = p.T
    LEFT JOIN a ON a.customer_id = p.customer_id AND a.T = p.T
    ORDER BY p.T, p.customer_id
    """
    out = con.execute(query).df()
    return _typed(
        out, counts + ["tenure_days", "emails_sent_90d", "sms_sent_90d", "complaints_90d"]
    )


def realtime_features(
    events: pd.DataFrame, profile: pd.DataFrame, times: Sequence[pd.Timestamp]
) -> pd.DataFrame:
    """The real-time view's fields as of each snapshot: open basket (adds and removes since the
    last checkout or purchase), and the last visit with its channel."""
    con = _connect(events, profile, times)
    query = f"""
    WITH grid AS (
        SELECT p.customer_id, s.T FROM prof p CROSS JOIN snaps s
        WHERE p.tenure_start IS NULL OR p.tenure_start < s.T
    ),
    cleared AS (
        SELECT e.customer_id, s.T, max(e.ts) AS at FROM ev e JOIN snaps s ON e.ts < s.T
        WHERE e.event_type IN ({_sql_list(BASKET_CLEARING_TYPES)}) GROUP BY e.customer_id, s.T
    ),
    basket AS (
        SELECT e.customer_id, s.T,
            sum(CASE WHEN e.event_type = 'basket_add' THEN e.quantity ELSE -e.quantity END)
                AS items,
            sum(CASE WHEN e.event_type = 'basket_add' THEN e.value ELSE -e.value END) AS value,
            max(e.ts) AS updated_at
        FROM ev e JOIN snaps s ON e.ts < s.T
        LEFT JOIN cleared k ON k.customer_id = e.customer_id AND k.T = s.T
        WHERE e.event_type IN ('basket_add', 'basket_remove') AND (k.at IS NULL OR e.ts > k.at)
        GROUP BY e.customer_id, s.T
    ),
    visit AS (
        SELECT e.customer_id, s.T, max(e.ts) AS at, arg_max(e.channel, e.ts) AS channel
        FROM ev e JOIN snaps s ON e.ts < s.T
        WHERE e.event_type IN ({_sql_list(VISIT_TYPES)}) GROUP BY e.customer_id, s.T
    )
    SELECT g.customer_id, g.T AS event_timestamp,
        greatest(coalesce(b.items, 0), 0) AS basket_items,
        greatest(coalesce(b.value, 0.0), 0.0) AS basket_value,
        b.updated_at AS basket_updated_at,
        v.at AS last_visit_at,
        v.channel AS last_channel
    FROM grid g
    LEFT JOIN basket b ON b.customer_id = g.customer_id AND b.T = g.T
    LEFT JOIN visit v ON v.customer_id = g.customer_id AND v.T = g.T
    ORDER BY g.T, g.customer_id
    """
    out = con.execute(query).df()
    return _typed(out, ["basket_items"])


def _typed(frame: pd.DataFrame, int_cols: Sequence[str]) -> pd.DataFrame:
    """Microsecond UTC timestamps (DuckDB and Feast reject ns tz-aware) and int64 counts."""
    for col in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[col]):
            frame[col] = pd.to_datetime(frame[col], utc=True).astype("datetime64[us, UTC]")
    for col in int_cols:
        frame[col] = frame[col].fillna(0).astype("int64")
    return frame
