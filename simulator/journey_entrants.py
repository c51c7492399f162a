"""Who enters a journey when, found from the simulated world directly.

STAND-IN, to be replaced by ``journeys.triggers.entries`` (h-triggers) once it is on the
branch: ``simulator.journey_sim`` calls :func:`world_entries` only through ``find_entries``.
The rules here follow the trigger models of ``journeys.definition``: an intent's events (a basket
added on web or app and not checked out within ``idle``), a behavioural purchase-frequency drop,
a churn-risk crossing (the truth's hazard standing in for the model's score, evaluated daily),
a lifecycle anchor (sign-up, renewal) plus ``after``, a calendar date (contract end plus
``offset``, at local ``at``). One live instance per customer and re-entry after the cool-down are
approximated by spacing a customer's entries by the dialog's longest path plus
``reentry_after``.
"""

from __future__ import annotations

from datetime import time, timedelta

import numpy as np
import pandas as pd

from journeys.definition import (
    BehaviouralTrigger,
    CalendarTrigger,
    IntentTrigger,
    Journey,
    LifecycleTrigger,
    PredictiveTrigger,
    WaitForStep,
    WaitStep,
    successors,
)
from simulator.clock import US_PER_DAY, to_us
from simulator.goals import Unsupported, WorldView
from simulator.people import contract_end_at

ENTRY_COLUMNS = ("person", "entered_at", "product_id")
EVALUATE_AT_HOUR = 9  # daily scores and baselines are evaluated at 09:00 UTC


def _us(d: timedelta | None) -> int:
    return 0 if d is None else int(d.total_seconds() * 1_000_000)


def world_entries(view: WorldView, journey: Journey, start: int, end: int) -> pd.DataFrame:
    """Entries (person index, entered_at in us, product_id) in [start, end), spaced per
    customer so one instance is live at a time."""
    trig = journey.entry
    if isinstance(trig, IntentTrigger):
        out = _intent(view, trig)
    elif isinstance(trig, BehaviouralTrigger):
        out = _frequency_drop(view, trig, start, end)
    elif isinstance(trig, PredictiveTrigger):
        out = _daily(view, start, end, lambda idx, at: view.churn_risk(idx, at) > trig.above)
    elif isinstance(trig, LifecycleTrigger):
        col = "tenure_start" if trig.anchor == "sign_up" else "renewed_at"
        anchor = view.people[col].to_numpy()
        person = np.flatnonzero(anchor >= 0)
        out = _frame(person, anchor[person] + _us(trig.after))
    elif isinstance(trig, CalendarTrigger):
        out = _calendar(view, trig, journey.rules.zone(), start, end)
    else:  # pragma: no cover - the definition's union is closed
        raise Unsupported(f"entry.type: {trig.type!r} is not simulated")
    t = out["entered_at"].to_numpy()
    person = out["person"].to_numpy()
    churned = view.col("churned_at", person)
    keep = (t >= start) & (t < end) & ((churned < 0) | (churned > t))
    return _spaced(out[keep], longest_path_us(journey) + _us(journey.rules.reentry_after))


def _frame(person: np.ndarray, t: np.ndarray, product: np.ndarray | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "person": np.asarray(person, dtype=np.int64),
            "entered_at": np.asarray(t, dtype=np.int64),
            "product_id": np.full(len(person), None, dtype=object) if product is None else product,
        }
    )


def _intent(view: WorldView, trig: IntentTrigger) -> pd.DataFrame:
    ev = view.events
    m = (ev["event_type"] == trig.event).to_numpy()
    if trig.channels:
        m &= ev["channel"].isin(trig.channels).to_numpy()
    e = ev[m].sort_values(["person", "ts"], kind="stable")
    person, t = e["person"].to_numpy(), e["ts"].to_numpy()
    product = e["product_id"].to_numpy()
    ok = np.ones(len(e), dtype=bool)
    if trig.count > 1:
        back = np.arange(len(e)) - (trig.count - 1)
        safe = np.maximum(back, 0)
        ok &= (back >= 0) & (person[safe] == person) & (t - t[safe] <= _us(trig.within))
    at = t + _us(trig.idle)
    for u in trig.unless:
        ok &= view.stream(u).count(person, t, at) == 0
    return _frame(person[ok], at[ok], product[ok])


def _grid(start: int, end: int) -> np.ndarray:
    first = start - start % US_PER_DAY + EVALUATE_AT_HOUR * 3600 * 1_000_000
    return np.arange(first, end, US_PER_DAY, dtype=np.int64)


def _daily(view: WorldView, start: int, end: int, cond) -> pd.DataFrame:  # noqa: ANN001
    """Entries where a daily condition turns true (or is true at the first evaluation)."""
    days = _grid(start, end)
    n = len(view.people)
    if not len(days):
        return _frame(np.zeros(0), np.zeros(0))
    idx = np.tile(np.arange(n), len(days))
    at = np.repeat(days, n)
    on = cond(idx, at).reshape(len(days), n)
    turned = on & ~np.vstack([np.zeros((1, n), dtype=bool), on[:-1]])
    d, p = np.nonzero(turned)
    return _frame(p, days[d])


def _frequency_drop(
    view: WorldView, trig: BehaviouralTrigger, start: int, end: int
) -> pd.DataFrame:
    if trig.change != "frequency_drop":
        raise Unsupported(f"entry.change: {trig.change!r} is not simulated (frequency_drop is)")
    w = _us(trig.window)
    s = view.stream(trig.event)

    def dropped(idx: np.ndarray, at: np.ndarray) -> np.ndarray:
        prior = s.count(idx, at - 2 * w, at - w)
        recent = s.count(idx, at - w, at)
        return (prior >= 1) & (recent <= (1 - trig.drop) * prior)

    return _daily(view, start + 2 * w, end, dropped)


def _calendar(
    view: WorldView, trig: CalendarTrigger, zone: object, start: int, end: int
) -> pd.DataFrame:
    if trig.field is None:
        days = _grid(start, end)
        mmdd = pd.to_datetime(days, unit="us", utc=True).strftime("%m-%d")
        ymd = pd.to_datetime(days, unit="us", utc=True).strftime("%Y-%m-%d")
        hit = days[(ymd == trig.date) | (mmdd == trig.date)]
        n = len(view.people)
        person, t = np.tile(np.arange(n), len(hit)), np.repeat(hit, n)
    else:
        p = view.people
        ends = np.concatenate([p["prior_contract_end"].to_numpy(), p["contract_end"].to_numpy()])
        person = np.tile(np.arange(len(p)), 2)
        person, t = person[ends >= 0], ends[ends >= 0] + _us(trig.offset)
        # the contract end as known at entry: a renewal after entry moves it later
        known = contract_end_at(p, person, t) + _us(trig.offset) == t
        person, t = person[known], t[known]
    return _frame(person, _local(t, trig.at, zone))


def _local(t: np.ndarray, at: time, zone: object) -> np.ndarray:
    """The same local date as ``t`` at local time ``at``, in UTC microseconds."""
    if not len(t):
        return np.asarray(t, dtype=np.int64)
    local = pd.to_datetime(np.asarray(t), unit="us", utc=True).tz_convert(zone).normalize()
    when = local + pd.Timedelta(hours=at.hour, minutes=at.minute)
    return np.asarray(to_us(pd.Series(when.tz_convert("UTC"))), dtype=np.int64)


def longest_path_us(journey: Journey) -> int:
    """The longest a pass through the steps can take (a cycle counts once; ``until``: a day),
    capped at the goal window."""
    by_id = {s.id: s for s in journey.steps}
    memo: dict[str, int] = {}

    def visit(sid: str, seen: frozenset[str]) -> int:
        if sid in memo:
            return memo[sid]
        s = by_id[sid]
        own = 0
        if isinstance(s, WaitStep):
            own = _us(s.duration) if s.duration is not None else US_PER_DAY
        elif isinstance(s, WaitForStep):
            own = _us(s.timeout)
        nxt = [visit(t, seen | {sid}) for t in successors(s) if t not in seen]
        memo[sid] = own + max(nxt, default=0)
        return memo[sid]

    return min(visit(journey.steps[0].id, frozenset()), _us(journey.goal.within))


def _spaced(entries: pd.DataFrame, gap: int) -> pd.DataFrame:
    """Keep a customer's entries at least ``gap`` apart (one live instance, the cool-down)."""
    e = entries.sort_values(["person", "entered_at"], kind="stable").reset_index(drop=True)
    person, t = e["person"].to_numpy(), e["entered_at"].to_numpy()
    keep = np.zeros(len(e), dtype=bool)
    last_p, last_t = -1, 0
    for i in range(len(e)):
        if person[i] != last_p or t[i] >= last_t + gap:
            keep[i] = True
            last_p, last_t = person[i], t[i]
    return e[keep].sort_values(["entered_at", "person"], kind="stable").reset_index(drop=True)
