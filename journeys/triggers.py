"""When a customer enters a journey: entry triggers evaluated in batch and online.

``entries`` answers "who would have entered, when, in [start, end)" from an event stream and a
profile table, vectorised, for the evaluation, the simulator's truth and back-fills.
``due_scheduled`` and ``matches_intent`` answer the same question for one customer at run time
(the runner, the ingest path); tests hold the two forms to the same answers.

Conventions: batch windows are [start, end), online windows (since, now]; all times UTC,
calendar and day boundaries in the journey's time zone (``rules.timezone``; UTC for a bare
trigger). Event frames have columns ts, customer_id, channel, event_type, product_id (value is
not read); the simulator's events carry true_person_id and identifiers, which the caller maps to
customer_id. Profile frames have one row per customer: customer_id, sign_up, contract_end
(NaT: none), renewed_at (NaT: never). Predictive triggers read score snapshots instead: a long
frame (customer_id, scored_at, <score>), any number of rows per customer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

import numpy as np
import pandas as pd

from features.aggregates import DAYS_PER_MONTH
from journeys.definition import (
    BehaviouralTrigger,
    CalendarTrigger,
    IntentTrigger,
    Journey,
    LifecycleTrigger,
    PredictiveTrigger,
)

ENTRY_COLUMNS = ("customer_id", "ts", "channel", "product_id")
SCHEDULED = (BehaviouralTrigger, PredictiveTrigger, LifecycleTrigger, CalendarTrigger)
# The simulator's store_visit events carry no store identifier (simulator/events.py): "a first
# visit to a new store" cannot be told from the data, so journeys.validate refuses new_store.
SUPPORTED_CHANGES = ("frequency_drop", "new_category")
MIN_BASELINE_EVENTS = 3  # fewer events in the baseline window is no evidence of a drop
# An event that takes back an earlier one: a removed item leaves the basket.
UNDO_EVENTS = {"basket_add": "basket_remove"}
# Online frequency drop reads windowed counts from the profile, by event type.
COUNT_FEATURES = {"purchase": "purchases_{days}d"}
PREVIOUS = "{score}_previous"  # key in ``scores`` of the score at the last evaluation


class UnsupportedTrigger(ValueError):
    """A trigger this data cannot evaluate (no store identifier, no feature for it online)."""


def previous_key(score: str) -> str:
    """Where ``due_scheduled`` looks for a score's value at the previous evaluation."""
    return PREVIOUS.format(score=score)


# --- batch ------------------------------------------------------------------------------------
def entries(
    journey_or_trigger: Any,
    events: pd.DataFrame | None,
    profiles: pd.DataFrame | None,
    start: datetime,
    end: datetime,
    *,
    zone: tzinfo | None = None,
) -> pd.DataFrame:
    """Every moment in [start, end) a customer would enter (before holdout, one-instance and
    re-entry rules, which the runner applies): columns customer_id, ts (UTC), channel,
    product_id (the entering event's; None for scheduled triggers but new_category)."""
    trigger, zone = _unpack(journey_or_trigger, zone)
    t0, t1 = _utc(start), _utc(end)
    if isinstance(trigger, IntentTrigger):
        out = _intent(trigger, _events(events))
    elif isinstance(trigger, BehaviouralTrigger):
        out = _behavioural(trigger, _events(events), t0, t1, zone)
    elif isinstance(trigger, PredictiveTrigger):
        out = _predictive(trigger, _need(profiles, "profiles (score snapshots)"))
    elif isinstance(trigger, LifecycleTrigger):
        out = _lifecycle(trigger, _need(profiles, "profiles"))
    elif isinstance(trigger, CalendarTrigger):
        out = _calendar(trigger, _need(profiles, "profiles"), t0, t1, zone)
    else:
        raise TypeError(f"not a journey or entry trigger: {type(trigger).__name__}")
    out = out[(out["ts"] >= t0) & (out["ts"] < t1)]
    out = out.sort_values(["ts", "customer_id"], kind="stable").reset_index(drop=True)
    return out[list(ENTRY_COLUMNS)]


def _unpack(journey_or_trigger: Any, zone: tzinfo | None) -> tuple[Any, tzinfo]:
    if isinstance(journey_or_trigger, Journey):
        return journey_or_trigger.entry, zone or journey_or_trigger.rules.zone()
    return journey_or_trigger, zone or UTC


def _utc(t: Any) -> pd.Timestamp:
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _need(frame: pd.DataFrame | None, what: str) -> pd.DataFrame:
    if frame is None:
        raise ValueError(f"{what}: required for this trigger")
    return frame


def _events(events: pd.DataFrame | None) -> pd.DataFrame:
    ev = _need(events, "events")
    missing = {"ts", "customer_id", "channel", "event_type", "product_id"} - set(ev.columns)
    if missing:
        raise ValueError(f"events: missing columns {sorted(missing)}")
    ev = ev[["ts", "customer_id", "channel", "event_type", "product_id"]]
    ev = ev.assign(ts=pd.to_datetime(ev["ts"], utc=True))
    return ev.sort_values(["customer_id", "ts"], kind="stable").reset_index(drop=True)


def _frame(customer: Any, ts: Any, channel: Any = None, product: Any = None) -> pd.DataFrame:
    at = pd.to_datetime(ts, utc=True).astype("datetime64[us, UTC]")  # the tables' resolution
    out = pd.DataFrame({"customer_id": customer, "ts": at})
    out["channel"] = channel if channel is not None else None
    out["product_id"] = product if product is not None else None
    return out


def _intent(trigger: IntentTrigger, ev: pd.DataFrame) -> pd.DataFrame:
    """Events that bring the count within ``within`` to exactly ``count``; with ``idle``, only
    the last of a burst (a later one within ``idle`` means the customer is not idle), entering
    at ts + idle unless an ``unless`` event of the customer falls in (ts, ts + idle]."""
    hits = ev[_matching(trigger, ev)].reset_index(drop=True)
    if trigger.count > 1:
        assert trigger.within is not None
        n = (
            hits.assign(one=1.0)
            .groupby("customer_id", sort=False)
            .rolling(trigger.within, on="ts")["one"]
            .sum()
        )  # in hits' order: hits are sorted by customer, then ts
        hits = hits[n.to_numpy() == trigger.count].reset_index(drop=True)
    if trigger.idle is None:
        return _frame(hits["customer_id"], hits["ts"], hits["channel"], hits["product_id"])
    idle = pd.Timedelta(trigger.idle)
    same = hits["customer_id"].eq(hits["customer_id"].shift(-1))
    superseded = same & (hits["ts"].shift(-1) - hits["ts"] <= idle)
    burst = (~hits["customer_id"].eq(hits["customer_id"].shift()) |
             (hits["ts"] - hits["ts"].shift() > idle)).cumsum()  # fmt: skip
    hits = hits.assign(burst=burst, due=hits["ts"] + idle)
    last = hits[~superseded.to_numpy()].copy()
    if trigger.unless:
        stop = ev[ev["event_type"].isin(trigger.unless)][["customer_id", "ts"]]
        nxt = _next_after(last[["customer_id", "ts"]], stop)
        last = last[~(nxt <= last["due"].to_numpy())]
    if trigger.event in UNDO_EVENTS:
        last = _still_there(hits, last, ev[ev["event_type"] == UNDO_EVENTS[trigger.event]])
    return _frame(last["customer_id"], last["due"], last["channel"], last["product_id"])


def _matching(trigger: IntentTrigger, ev: pd.DataFrame) -> pd.Series:
    m = ev["event_type"] == trigger.event
    if trigger.channels:
        m &= ev["channel"].isin(trigger.channels)
    return m


def _next_after(at: pd.DataFrame, later: pd.DataFrame) -> np.ndarray:
    """For each (customer_id, ts) row of ``at``, the ts of the customer's next ``later`` event
    strictly after it (NaT if none), in ``at``'s row order."""
    left = at.reset_index(drop=True).assign(_row=np.arange(len(at))).sort_values("ts")
    right = later[["customer_id", "ts"]].assign(nxt=later["ts"]).sort_values("ts")
    m = pd.merge_asof(
        left, right, on="ts", by="customer_id", direction="forward", allow_exact_matches=False
    )
    return m.sort_values("_row")["nxt"].to_numpy()


def _still_there(hits: pd.DataFrame, last: pd.DataFrame, undo: pd.DataFrame) -> pd.DataFrame:
    """A basket is what its burst added minus what was removed by the time it is due: enter
    with the latest item still in it, not at all if it was emptied."""
    adds = hits[hits["burst"].isin(last["burst"])][["burst", "customer_id", "ts", "product_id"]]
    span = last[["burst", "customer_id", "due"]].merge(
        adds.groupby("burst", as_index=False)["ts"].min().rename(columns={"ts": "first"})
    )
    gone = undo.merge(span, on="customer_id")
    gone = gone[(gone["ts"] >= gone["first"]) & (gone["ts"] <= gone["due"])]
    removed = gone.groupby(["burst", "product_id"]).size().rename("removed")
    adds = adds.assign(k=adds.groupby(["burst", "product_id"]).cumcount() + 1)
    adds = adds.join(removed, on=["burst", "product_id"])
    kept = adds[adds["k"] > adds["removed"].fillna(0)]  # a removal takes the earliest such add
    pick = kept.groupby("burst")["ts"].idxmax()
    product = kept.loc[pick, ["burst", "product_id"]]
    return last.drop(columns="product_id").merge(product, on="burst")


def _day_index(ts: pd.Series, zone: tzinfo) -> np.ndarray:
    """Local calendar day of each time, as days since 1970-01-01."""
    local = ts.dt.tz_convert(zone).dt.tz_localize(None).dt.normalize()
    return ((local - pd.Timestamp("1970-01-01")) // pd.Timedelta(days=1)).to_numpy()


def _midnight(day: np.ndarray, zone: tzinfo) -> pd.DatetimeIndex:
    local = pd.Timestamp("1970-01-01") + pd.to_timedelta(day, unit="D")
    return pd.DatetimeIndex(local).tz_localize(zone, nonexistent="shift_forward",
                                               ambiguous=False).tz_convert("UTC")  # fmt: skip


def window_days(window: timedelta) -> int:
    """A frequency window counts whole local days (rounded up)."""
    return max(1, math.ceil(window / timedelta(days=1)))


def _behavioural(
    trigger: BehaviouralTrigger, ev: pd.DataFrame, t0: pd.Timestamp, t1: pd.Timestamp, zone: tzinfo
) -> pd.DataFrame:
    if trigger.change not in SUPPORTED_CHANGES:
        raise UnsupportedTrigger(
            f"entry.change: {trigger.change} is not supported: store_visit events carry no "
            "store identifier"
        )
    ev = ev[ev["event_type"] == trigger.event]
    if trigger.change == "new_category":
        ev = ev[ev["product_id"].notna()]
        first = ~ev.duplicated(["customer_id", "product_id"])
        not_first_ever = ev["customer_id"].duplicated()
        new = ev[first & not_first_ever]
        return _frame(new["customer_id"], new["ts"], new["channel"], new["product_id"])
    return _frequency_drop(trigger, ev, t0, t1, zone)


def _frequency_drop(
    trigger: BehaviouralTrigger, ev: pd.DataFrame, t0: pd.Timestamp, t1: pd.Timestamp, zone: tzinfo
) -> pd.DataFrame:
    """At each local midnight, events in the last ``window`` days against the ``window`` days
    before; the customer enters on the first midnight the drop holds (not again until it has
    stopped holding), with at least MIN_BASELINE_EVENTS in the baseline."""
    w = window_days(trigger.window)
    d0 = int(_day_index(pd.Series([t0]), zone)[0])
    d1 = int(_day_index(pd.Series([t1]), zone)[0]) + 1
    first, span = d0 - 2 * w - 1, (d1 - d0) + 2 * w + 2
    code, who = pd.factorize(ev["customer_id"])
    day = _day_index(ev["ts"], zone) - first
    keep = (day >= 0) & (day < span)
    counts = np.zeros((len(who), span + 1), dtype=np.int64)
    np.add.at(counts, (code[keep], day[keep] + 1), 1)
    cum = counts.cumsum(axis=1)  # cum[:, k]: events on days < k
    bounds = np.arange(2 * w, span + 1)  # midnight opening day index k (relative to ``first``)
    recent = cum[:, bounds] - cum[:, bounds - w]
    base = cum[:, bounds - w] - cum[:, bounds - 2 * w]
    held = (base >= MIN_BASELINE_EVENTS) & (recent < (1 - trigger.drop) * base)
    rise = held[:, 1:] & ~held[:, :-1]
    c, k = np.nonzero(rise)
    at = _midnight(bounds[1:][k] + first, zone)
    return _frame(np.asarray(who)[c], at)


def _predictive(trigger: PredictiveTrigger, snaps: pd.DataFrame) -> pd.DataFrame:
    """A snapshot above ``above`` whose previous snapshot was not (the first counts)."""
    missing = {"customer_id", "scored_at", trigger.score} - set(snaps.columns)
    if missing:
        raise ValueError(f"profiles: missing columns {sorted(missing)} for a predictive trigger")
    s = snaps[["customer_id", "scored_at", trigger.score]].dropna()
    s = s.assign(scored_at=pd.to_datetime(s["scored_at"], utc=True))
    s = s.sort_values(["customer_id", "scored_at"], kind="stable")
    prev = s.groupby("customer_id", sort=False)[trigger.score].shift()
    up = (s[trigger.score] > trigger.above) & ~(prev > trigger.above)
    return _frame(s.loc[up, "customer_id"], s.loc[up, "scored_at"])


ANCHORS = {"sign_up": "sign_up", "contract_renewal": "renewed_at"}


def _lifecycle(trigger: LifecycleTrigger, profiles: pd.DataFrame) -> pd.DataFrame:
    col = ANCHORS[trigger.anchor]
    if col not in profiles.columns:
        raise ValueError(f"profiles: missing column {col!r} for anchor {trigger.anchor}")
    p = profiles[profiles[col].notna()]
    return _frame(p["customer_id"], pd.to_datetime(p[col], utc=True) + trigger.after)


def _calendar(
    trigger: CalendarTrigger,
    profiles: pd.DataFrame,
    t0: pd.Timestamp,
    t1: pd.Timestamp,
    zone: tzinfo,
) -> pd.DataFrame:
    if trigger.field is not None:
        if trigger.field not in profiles.columns:
            raise ValueError(f"profiles: missing column {trigger.field!r}")
        p = profiles[profiles[trigger.field].notna()]
        when = [calendar_moment(trigger, v.to_pydatetime(), zone)
                for v in pd.to_datetime(p[trigger.field], utc=True)]  # fmt: skip
        return _frame(p["customer_id"].to_numpy(), pd.DatetimeIndex(when, tz="UTC"))
    moments = date_moments(trigger, t0.to_pydatetime(), t1.to_pydatetime(), zone)
    ids = profiles["customer_id"].to_numpy()
    at = pd.DatetimeIndex(moments, tz="UTC").repeat(len(ids))
    return _frame(np.tile(ids, len(moments)), at)


def calendar_moment(trigger: CalendarTrigger, value: datetime, zone: tzinfo) -> datetime:
    """The field's local calendar date plus the offset (wall-clock arithmetic, so -60d is 60
    local days whatever DST does), at local ``at``, in UTC."""
    wall = value.astimezone(zone).replace(tzinfo=None) + trigger.offset
    return _at(wall.date(), trigger.at, zone)


def _at(day: date, at: time, zone: tzinfo) -> datetime:
    """Local ``at`` on ``day`` in UTC; a time skipped by DST counts at the offset before it."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def date_moments(trigger: CalendarTrigger, since: datetime, until: datetime, zone: tzinfo) -> list:
    """Each occurrence of the trigger's date at local ``at`` with since <= t < until: one for
    ``YYYY-MM-DD``, one a year for ``MM-DD`` (29 February only in leap years)."""
    assert trigger.date is not None
    parts = [int(x) for x in trigger.date.split("-")]
    years = [parts[0]] if len(parts) == 3 else range(since.year - 1, until.year + 2)
    month, day_of = parts[-2], parts[-1]
    out = []
    for y in years:
        try:
            t = _at(date(y, month, day_of), trigger.at, zone)
        except ValueError:
            continue
        if since <= t < until:
            out.append(t)
    return out


# --- online -----------------------------------------------------------------------------------
def matches_intent(trigger: IntentTrigger, event: Mapping[str, Any] | Any) -> bool:
    """Whether one event (a mapping or a model with event_type and channel) is of the kind the
    intent trigger counts. Counting, idle and unless need the customer's recent events: the
    ingest path and the runner keep those, as ``entries`` does in batch."""
    get = event.get if isinstance(event, Mapping) else lambda k: getattr(event, k, None)
    if get("event_type") != trigger.event:
        return False
    return not trigger.channels or get("channel") in trigger.channels


def due_scheduled(
    trigger: Any,
    profile: Mapping[str, Any],
    scores: Mapping[str, float],
    since: datetime,
    now: datetime,
    zone: tzinfo,
) -> datetime | None:
    """The latest moment in (since, now] a scheduled trigger fell due for this customer, or
    None. ``profile`` is the feature store's row (``as_of``: when it was computed, else now);
    raw CRM fields (sign_up, contract_end, renewed_at) win over what is derived from features.
    ``scores`` holds the model scores now and, under ``previous_key(score)``, at the previous
    evaluation (absent: this is the first, and a score above the threshold counts)."""
    since, now = _utc(since).to_pydatetime(), _utc(now).to_pydatetime()
    as_of = _when(profile.get("as_of")) or now
    if isinstance(trigger, PredictiveTrigger):
        score, before = scores.get(trigger.score), scores.get(previous_key(trigger.score))
        crossed = score is not None and score > trigger.above
        crossed &= before is None or not before > trigger.above
        return now if crossed and since < now else None
    if isinstance(trigger, LifecycleTrigger):
        anchor = _sign_up(profile, as_of) if trigger.anchor == "sign_up" else _renewed(profile)
        t = anchor + trigger.after if anchor is not None else None
        return t if t is not None and since < t <= now else None
    if isinstance(trigger, CalendarTrigger):
        if trigger.date is not None:
            hits = [t for t in date_moments(trigger, since, now + timedelta(microseconds=1), zone)
                    if t > since]  # fmt: skip
            return hits[-1] if hits else None
        end = _contract_end(profile, as_of)
        t = calendar_moment(trigger, end, zone) if end is not None else None
        return t if t is not None and since < t <= now else None
    if isinstance(trigger, BehaviouralTrigger) and trigger.change == "frequency_drop":
        return _drop_online(trigger, profile, since, now, zone)
    if isinstance(trigger, BehaviouralTrigger):
        raise UnsupportedTrigger(
            f"entry.change: {trigger.change} enters on an event, not on a schedule"
        )
    raise UnsupportedTrigger(f"entry.type: {getattr(trigger, 'type', trigger)!r} is not scheduled")


def _when(v: Any) -> datetime | None:
    if v is None or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return None
    return _utc(v).to_pydatetime()


def _sign_up(profile: Mapping[str, Any], as_of: datetime) -> datetime | None:
    """The CRM's sign-up, else midnight UTC of the day ``tenure_days`` before ``as_of``
    (the feature counts calendar days, so this is exact to the day)."""
    if (t := _when(profile.get("sign_up"))) is not None:
        return t
    days = profile.get("tenure_days")
    if days is None:
        return None
    return datetime.combine(as_of.date() - timedelta(days=int(days)), time(0), tzinfo=UTC)


def _renewed(profile: Mapping[str, Any]) -> datetime | None:
    if "renewed_at" not in profile:
        raise UnsupportedTrigger(
            "entry.anchor: contract_renewal needs renewed_at in the profile; no feature gives it"
        )
    return _when(profile["renewed_at"])


def _contract_end(profile: Mapping[str, Any], as_of: datetime) -> datetime | None:
    """The CRM's contract end, else ``as_of`` plus ``months_left_on_contract`` (None when the
    feature is 0: the contract has ended, or there is none)."""
    if "contract_end" in profile:
        return _when(profile["contract_end"])
    months = profile.get("months_left_on_contract")
    if months is None or not months > 0:
        return None
    return as_of + timedelta(days=float(months) * DAYS_PER_MONTH)


def count_feature(event: str, days: int) -> str:
    """The profile feature counting ``event`` over the last ``days`` days."""
    if event not in COUNT_FEATURES:
        raise UnsupportedTrigger(f"entry.event: no profile count of {event} events")
    return COUNT_FEATURES[event].format(days=days)


def _drop_online(
    trigger: BehaviouralTrigger,
    profile: Mapping[str, Any],
    since: datetime,
    now: datetime,
    zone: tzinfo,
) -> datetime | None:
    """The drop read from counts over the last W and 2W days (``purchases_60d`` and
    ``purchases_120d`` for a 60-day window). It is a level, not an edge: the runner's
    one-instance and re-entry rules stop a lasting drop entering every day."""
    w = window_days(trigger.window)
    names = [count_feature(trigger.event, d) for d in (w, 2 * w)]
    if any(n not in profile for n in names):
        raise UnsupportedTrigger(
            f"entry.window: frequency_drop online needs profile features {names}; "
            "the feature store has purchases_7d/30d/90d"
        )
    recent, both = (float(profile[n] or 0) for n in names)
    base = both - recent
    if not (base >= MIN_BASELINE_EVENTS and recent < (1 - trigger.drop) * base):
        return None
    local_today = now.astimezone(zone).date()
    midnight = _at(local_today, time(0), zone)
    return midnight if since < midnight <= now else None
