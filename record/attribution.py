"""Attribution: the one rule for which outcomes count, once, for which decision or experiment unit.

Everything that counts outcomes (the bandit's reward, the online learner, off-policy evaluation,
the report and the replay) goes through this module, so they all count the same thing:

* **Orders, once.** A purchase is an order: its ``order_id`` when the caller gave one, else a
  deterministic key of customer, product, amount and minute (:func:`order_key`). Every row of
  one order (a purchase event's revenue outcome, a ``POST /outcome`` conversion) collapses into
  one (:func:`orders`): worth the largest amount any row reports (they report the same purchase;
  a bare conversion's default value 1 must not add to it), a conversion when any row says so
  (the offer's cost is paid once), credited to the decision a row links, at its first time.
* **Per decision** (:func:`credit`: bandit, learner, OPE): an order that names a decision counts
  for it only at or after it and within the window; one that names none goes to the person's
  LAST delivered treatment decision before it within the window (to the last one that showed
  the offer it names, when it names one), never to several. Undelivered decisions (``pending``
  or ``cancelled`` messages) get nothing.
* **Rows no count can take** (:func:`sane_rows`): a time out of range or an amount that is not
  a finite number within ``max_money_value``, left by a ledger from before the API bounded
  its input, is skipped and counted rather than let one row drop or dominate a count.
* **Per experiment unit** (:func:`attribute`: the uplift report): a customer's *first* exposure
  or holdout assignment anchors the window, so treated and holdout customers are measured over
  the same window; every order of the person within it counts, on any channel.

Customer ids are the resolved ids the ledger holds; ``customer_map`` (old id -> current id, from
the identity graph's merges) makes a person's rows under an id merged away count as theirs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from features.events import EARLIEST, LATEST

UNIT = ["experiment", "customer_id"]
ORDER_TYPES = ("conversion", "revenue")  # outcome types that are purchases (orders)
# decision statuses that never reached the customer (a queued message, one cancelled unsent)
UNDELIVERED = ("pending", "cancelled")
CREDIT_COLUMNS = ["order", "decision_id", "type", "value", "ts", "cost_offer"]


def to_utc(ts: pd.Series) -> pd.Series:
    return pd.to_datetime(ts, utc=True)


def _bad_times(ts: pd.Series) -> pd.Series:
    """Times no report can place: unparseable, beyond what pandas holds (an outcome dated
    1497), or outside the bounds every event and outcome is held to (``features.events``)."""
    at = pd.to_datetime(ts, utc=True, errors="coerce")
    return at.isna() | (at < EARLIEST) | (at >= LATEST)


def _bad_values(values: pd.Series, max_value: float) -> pd.Series:
    v = pd.to_numeric(values, errors="coerce").astype(float)
    return ~(np.isfinite(v) & (v >= 0) & (v <= max_value))


def sane_rows(
    decisions: pd.DataFrame, outcomes: pd.DataFrame, max_value: float = math.inf
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The ledger's rows a report can count, and how many of each kind it skipped and why.

    A ledger written before the API bounded its input (or by hand) may hold an outcome dated
    1497 or worth 1e300: one such row must not drop the whole ledger from the report nor
    dominate its means; it is left out and counted (``max_value``: ``max_money_value``)."""
    skipped: dict[str, int] = {}

    def drop(frame: pd.DataFrame, bad: pd.Series, reason: str) -> pd.DataFrame:
        if n := int(bad.sum()):
            skipped[reason] = skipped.get(reason, 0) + n
        return frame[~bad]

    if not decisions.empty:
        decisions = drop(decisions, _bad_times(decisions["ts"]), "decision time out of range")
        decisions = decisions.assign(ts=to_utc(decisions["ts"]))
    if not outcomes.empty:
        outcomes = drop(outcomes, _bad_times(outcomes["ts"]), "outcome time out of range")
        reason = f"outcome value not a finite number in [0, {max_value:g}]"
        outcomes = drop(outcomes, _bad_values(outcomes["value"], max_value), reason)
        outcomes = outcomes.assign(ts=to_utc(outcomes["ts"]))
    return decisions, outcomes, skipped


def order_key(customer_id: str, product_id: str | None, amount: float, ts: datetime) -> str:
    """The identity of a purchase sent without an ``order_id``: the same customer buying the
    same product for the same amount in the same minute is one order, however it was reported."""
    minute = pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M")
    raw = f"{customer_id}|{product_id or ''}|{float(amount):.2f}|{minute}"
    return "auto:" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def person(customer_ids: pd.Series, customer_map: Mapping[str, str] | None) -> pd.Series:
    """Each row's person: its customer id, or the id it was merged into."""
    if not customer_map:
        return customer_ids
    return customer_ids.map(customer_map).fillna(customer_ids)


def delivered(decisions: pd.DataFrame) -> pd.Series:
    """Decisions that reached the customer: shown in session, sent or delivered (older rows
    without a status were all shown)."""
    if "status" not in decisions:
        return pd.Series(True, index=decisions.index)
    return decisions["status"].isna() | ~decisions["status"].isin(UNDELIVERED)


def orders(outcomes: pd.DataFrame) -> pd.DataFrame:
    """One row per order (clicks and other non-purchases stay one row each), see module doc."""
    cols = ["order", "decision_id", "customer_id", "offer_id", "type", "value", "ts"]
    if outcomes.empty:
        return pd.DataFrame(columns=cols)
    wanted = {*outcomes.columns, *cols, "order_id", "idempotency_key"} - {"order"}
    o = outcomes.reindex(columns=sorted(wanted)).copy()
    o["ts"] = to_utc(o["ts"])
    o["value"] = o["value"].astype(float).fillna(1.0)
    row = "row:" + (
        o["idempotency_key"].astype(str)
        if o["idempotency_key"].notna().all()
        else pd.Series(o.index.astype(str), index=o.index)
    )
    o["order"] = o["order_id"].where(o["order_id"].notna() & o["type"].isin(ORDER_TYPES), row)
    o = o.sort_values("ts", kind="stable")
    g = o.groupby("order", sort=False)
    out = g[["decision_id", "customer_id", "offer_id", "type"]].first()  # first non-null each
    converted = o["type"].eq("conversion").groupby(o["order"], sort=False).any()
    out["type"] = np.where(converted, "conversion", out["type"])
    out["value"], out["ts"] = g["value"].max(), g["ts"].min()
    return out.reset_index()[cols]


def _shows(decision_offer: Any, slots: Any, offer: Any) -> bool:
    """Whether a decision showed ``offer`` (its chosen offer, or any slot it logged)."""
    if not isinstance(offer, str):
        return False
    if decision_offer == offer:
        return True
    listed = slots if isinstance(slots, list) else []
    return any(isinstance(s, dict) and s.get("offer_id") == offer for s in listed)


def credit(
    decisions: pd.DataFrame,
    outcomes: pd.DataFrame,
    window: timedelta,
    customer_map: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Which decision each order (or other outcome) counts for: one row per credited order with
    ``CREDIT_COLUMNS``; ``cost_offer`` is the offer whose cost a converted order pays: the offer
    it names when the decision showed it, the decision's when it names none; None otherwise
    and for an order that is not a conversion (a decision pays for nothing it did not show).

    ``decisions`` may hold every decision: only delivered treatment decisions with an offer are
    credited (the rule is in the module doc). Needs ``decision_id``, ``customer_id``, ``ts``,
    ``offer_id`` (``arm``, ``status`` and ``slots`` are used when present).
    """
    if decisions.empty or outcomes.empty:
        return pd.DataFrame(columns=CREDIT_COLUMNS)
    d = decisions[decisions["offer_id"].notna() & delivered(decisions)]
    if "arm" in d:
        d = d[d["arm"] == "treatment"]
    d = d.reindex(columns=["decision_id", "customer_id", "ts", "offer_id", "slots"])
    d = d.rename(columns={"ts": "ts_d", "offer_id": "offer_d", "customer_id": "cid_d"})
    d["ts_d"], d["person"] = to_utc(d["ts_d"]), person(d["cid_d"], customer_map)
    o = orders(outcomes)
    o["person"] = person(o["customer_id"], customer_map)
    linked = o[o["decision_id"].notna()].drop(columns="person").merge(d, on="decision_id")
    free = o[o["decision_id"].isna() & o["person"].notna()].drop(columns="decision_id")
    free = free.merge(d, on="person")
    both = pd.concat([linked, free], ignore_index=True)
    both = both[(both["ts"] >= both["ts_d"]) & (both["ts"] <= both["ts_d"] + window)].copy()
    both["named"] = [
        _shows(do, s, oo)
        for do, s, oo in zip(both["offer_d"], both["slots"], both["offer_id"], strict=True)
    ]
    # per order: its linked decision (the only candidate), else the last one that showed the
    # offer it names, else the last one
    both = both.sort_values(["order", "named", "ts_d", "decision_id"], kind="stable")
    both = both.drop_duplicates("order", keep="last")
    # a decision pays only for an offer it showed: the one the order names, else its own
    paid = both["offer_id"].where(both["named"], both["offer_d"].where(both["offer_id"].isna()))
    both["cost_offer"] = paid.where(both["type"] == "conversion", None)
    return both[CREDIT_COLUMNS].reset_index(drop=True)


def first_exposures(exposures: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, customer): the earliest exposure or holdout assignment.

    Rows without a customer id (erased people) cannot be followed and are left out.
    """
    missing = [c for c in (*UNIT, "arm", "ts") if c not in exposures.columns]
    if missing:
        raise ValueError(f"exposures lack column(s) {missing}")
    df = exposures.dropna(subset=["customer_id"]).assign(ts=lambda d: to_utc(d["ts"]))
    return df.sort_values("ts", kind="stable").drop_duplicates(UNIT).reset_index(drop=True)


def attribute(
    exposures: pd.DataFrame,
    outcomes: pd.DataFrame,
    window_days: float = 30,
    match_product: bool = False,
    customer_map: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Per unit: ``converted``, ``converted_at`` (first counted), ``revenue``, ``n_outcomes``.

    ``outcomes`` needs ``customer_id`` and ``ts`` (``value`` is summed as revenue when present);
    pass orders (:func:`orders`) so a purchase reported twice counts once. With
    ``match_product`` only outcomes whose ``product_id`` is the exposure's ``product_id``
    (the offer's product) count; an exposure without a product accepts any purchase. With
    ``customer_map`` units and outcomes are keyed by the id each was merged into.
    """
    if customer_map:
        exposures = exposures.assign(customer_id=person(exposures["customer_id"], customer_map))
        outcomes = outcomes.assign(customer_id=person(outcomes["customer_id"], customer_map))
    units = first_exposures(exposures)
    # a source's own outcome columns (the simulator's converted flag) are replaced, not mixed in
    units = units.drop(
        columns=["converted", "converted_at", "revenue", "n_outcomes"], errors="ignore"
    )
    units["unit"] = range(len(units))
    out = outcomes.dropna(subset=["customer_id"]).assign(o_ts=lambda d: to_utc(d["ts"]))
    out = out.assign(o_value=out["value"].astype(float) if "value" in out else 1.0)
    extra = ["product_id"] if match_product else []
    pairs = units[["unit", "customer_id", "ts", *extra]]
    bought = out[["customer_id", "o_ts", "o_value", *extra]]
    joined = pairs.merge(bought, on="customer_id", suffixes=("", "_bought"))
    window = pd.Timedelta(days=window_days)
    hit = (joined["o_ts"] >= joined["ts"]) & (joined["o_ts"] <= joined["ts"] + window)
    if match_product:
        hit &= joined["product_id"].isna() | (joined["product_id"] == joined["product_id_bought"])
    per_unit = (
        joined[hit]
        .groupby("unit")
        .agg(converted_at=("o_ts", "min"), revenue=("o_value", "sum"), n_outcomes=("o_ts", "size"))
    )
    units = units.join(per_unit, on="unit")
    units["n_outcomes"] = units["n_outcomes"].fillna(0).astype(int)
    units["revenue"] = units["revenue"].fillna(0.0)
    units["converted"] = units["n_outcomes"] > 0
    return units.drop(columns="unit")
