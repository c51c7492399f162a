"""Outbound runs under capacity limits: decide for a whole audience on one channel, choose at
most one offer per customer maximising total expected incremental value within the limits
(``serving.limits``), queue the chosen messages, and store the limits' prices for /decide.

Every customer goes through the same pipeline as a visit (identity, features, holdout,
consent, caps, scores): holdout customers are logged as holdout and get nothing. The LP's
choice is deterministic given the scores, so each decision logs probability 1 for what it
carries (the offer, or ``no_offer`` for a treated customer the limits left out): the true
probability of what the customer was shown, which is what OPE and uplift need.
"""

from __future__ import annotations

import csv
import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select

from estimation.allocation import Allocation, Limit, Problem, greedy, solve_lp, solve_milp
from offers.catalog import NO_OFFER
from record.prices import store_prices
from record.tables import DecisionRow, outbox, utc
from serving import decide as pipeline
from serving.deps import Deps
from serving.limits import Limits
from serving.schemas import DecideRequest

TRIGGER = "outbound"  # outbox trigger: outbound:<run_id>
MILP_MAX_PAIRS = 200_000  # above this the MILP comparison is skipped (it would not finish)
# (customer ids, offer ids, channel, time) -> truth's expected incremental value matrix
TruthValues = Callable[[list[str], list[str], str, datetime], np.ndarray]


class OutboundError(ValueError):
    """A run that cannot start (unknown audience, no catalogue); one line naming why."""


def audience(deps: Deps, name: str | None) -> list[str]:
    """The run's customers: every customer the identity graph holds (merged-away ids left
    out); or, for a NAME, the treatment members of the target group NAME
    (``<home>/audiences/NAME.yaml``, its holdout left out: it gets nothing), else the ids in
    ``<home>/audiences/NAME.csv`` (a ``customer_id`` column, else the first)."""
    from serving import audiences

    if name is not None:
        folder = Path(deps.settings.home) / "audiences"
        if any((folder / f"{name}.{ext}").is_file() for ext in ("yaml", "yml")):
            members = audiences.current(deps, name)
            return sorted(members.loc[members["arm"] == "treatment", "customer_id"])
        path = folder / f"{name}.csv"
        if not path.is_file():
            raise OutboundError(f"--audience: no audience {name!r} ({path} is missing)")
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            return []
        header = [h.strip() for h in rows[0]]
        col = header.index("customer_id") if "customer_id" in header else 0
        body = rows[1:] if "customer_id" in header else rows
        return list(dict.fromkeys(r[col].strip() for r in body if len(r) > col and r[col].strip()))
    try:
        return audiences.all_customers(deps)
    except RuntimeError:
        raise OutboundError(f"--audience: none given and no identity graph "
                            f"({deps.missing.get('graph', 'unavailable')})") from None  # fmt: skip


def used_today(deps: Deps, channel: str, at: datetime) -> int:
    """Messages already queued on the channel since the run's UTC midnight (not cancelled):
    they used some of today's capacity."""
    midnight = datetime.combine(utc(at).date(), dtime(0), tzinfo=utc(at).tzinfo)
    q = select(func.count()).where(
        outbox.c.channel == channel, outbox.c.created_at >= midnight, outbox.c.status != "cancelled"
    )
    with deps.ledger.engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def build_problem(
    rows: Sequence[DecisionRow], offer_ids: list[str], costs: dict[str, float],
    limits: Limits, channel: str, capacity_left: int | None, values: np.ndarray | None = None,
) -> Problem:  # fmt: skip
    """Candidates: treated customers' allowed offers with a positive value (``no_offer`` is
    the default, not a candidate); limits: the offers' stock, the channel's capacity left
    today, the budget against the offers' catalogue cost. ``values`` (customers x offers)
    replaces the models' values: the truth's, for the oracle's allocation."""
    col = {o: k for k, o in enumerate(offer_ids)}
    cust, off, val = [], [], []
    for i, row in enumerate(rows):
        if row.arm != "treatment" or row.customer_id is None:
            continue
        for oid, v in (row.scores.get("value") or {}).items():
            if oid == NO_OFFER or oid not in col:
                continue
            v = float(v) if values is None else float(values[i, col[oid]])
            if v > 0:
                cust.append(i), off.append(col[oid]), val.append(v)
    k = len(offer_ids)
    lims = [
        Limit("offer_stock", oid, float(lim.stock), (np.arange(k) == col[oid]).astype(float))
        for oid, lim in limits.offers.items()
    ]
    if capacity_left is not None:
        lims.append(Limit("channel_capacity", channel, float(capacity_left), np.ones(k)))
    if limits.budget is not None:
        use = np.array([costs.get(o, 0.0) for o in offer_ids])
        lims.append(Limit("budget", "money", limits.budget.money, use))
    return Problem(len(rows), k, np.asarray(cust, int), np.asarray(off, int),
                   np.asarray(val, float), lims)  # fmt: skip


def value_summary(rows: Sequence[DecisionRow]) -> dict[str, Any]:
    """The models' values of every treated customer's allowed offers (``no_offer`` aside):
    only positive ones are candidates, so a run that sends nothing says whether the models
    valued everything below zero (and by how much) rather than leaving an unexplained 0."""
    vals = [
        float(v)
        for r in rows
        if r.arm == "treatment" and r.customer_id is not None
        for oid, v in (r.scores.get("value") or {}).items()
        if oid != NO_OFFER
    ]
    best = max(vals) if vals else None
    return {"pairs": len(vals), "positive": sum(v > 0 for v in vals),
            "max": None if best is None else round(best, 4)}  # fmt: skip


def _decided(row: DecisionRow, offer: str | None, run_id: str) -> DecisionRow:
    """The row as the run decided it: what it carries with probability 1 (see module doc)."""
    if row.arm != "treatment":
        return row
    allowed = row.scores.get("value") or {}
    if offer is None and NO_OFFER in allowed:
        offer = NO_OFFER
    probs = {offer: 1.0} if offer is not None else {}
    slots = [{"offer_id": offer, "position": 0, "probability": 1.0}] if offer else []
    scores = {**row.scores, "outbound": {"run_id": run_id, "method": "lp"}}
    reason = "; ".join(x for x in (row.reason, f"outbound run {run_id}") if x)[:200]
    return row.model_copy(update={
        "offer_id": offer, "propensity": 1.0 if offer else None, "probabilities": probs,
        "slots": slots, "scores": scores, "reason": reason,
        "status": "pending" if offer not in (None, NO_OFFER) else row.status,
    })  # fmt: skip


def _message(row: DecisionRow, offer: Any, at: datetime, run_id: str) -> dict[str, Any]:
    payload = {
        "decision_id": row.decision_id, "customer_id": row.customer_id, "channel": row.channel,
        "offer_id": offer.id, "name": offer.name, "run_id": run_id,
        "creative": {"headline": offer.headline, "body": offer.body, "cta": offer.cta},
        "value": float(row.scores["value"][offer.id]),
    }  # fmt: skip
    return {"message_id": uuid.uuid4().hex, "created_at": at, "customer_id": row.customer_id,
            "channel": row.channel, "decision_id": row.decision_id, "offer_id": offer.id,
            "trigger": f"{TRIGGER}:{run_id}", "payload": payload, "status": "pending"}  # fmt: skip


def _summary(a: Allocation, truth: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {"total": round(a.total, 4), "chosen": int(a.chosen.sum()),
                           "seconds": round(a.seconds, 4), "status": a.status}  # fmt: skip
    if a.bound is not None:
        out["bound"] = round(a.bound, 4)
        out["fractional_customers"] = a.fractional
    if truth is not None:
        out["truth_total"] = round(float(truth[a.chosen].sum()), 4)
    return out


def run_outbound(
    deps: Deps,
    channel: str,
    limits: Limits,
    customers: Sequence[str],
    *,
    seed: int = 0,
    milp_seconds: float = 20.0,
    truth: TruthValues | None = None,
) -> dict[str, Any]:
    """Decide, solve, queue and log one run; returns its figures (see module doc)."""
    start = time.perf_counter()
    if deps.catalog is None:
        raise OutboundError(f"catalog: {deps.missing.get('catalog', 'unavailable')}")
    run_id, at = uuid.uuid4().hex, utc(deps.clock())
    # the run prices its own limits: values before any earlier run's prices
    raw = deps
    if deps.prices is not None:
        raw = dataclasses.replace(deps, prices=None)
        raw.__dict__["assigner"] = deps.assigner  # one assigner: its draws are flushed below
    requests = [DecideRequest(customer_id=c, channel=channel) for c in customers]
    planned = [row for _, row in pipeline.plan_many(requests, raw)]
    t_plan = time.perf_counter() - start
    offers = {o.id: o for o in deps.offers()}
    offer_ids = [o for o in offers if o != NO_OFFER]
    costs = {o: float(offers[o].cost) for o in offer_ids}
    cap = limits.channels.get(channel)
    left = None if cap is None else max(0, cap.capacity_per_day - used_today(deps, channel, at))
    problem = build_problem(planned, offer_ids, costs, limits, channel, left)
    lp = solve_lp(problem)
    base = greedy(problem, seed=seed)
    mip = None
    if lp.pairs is not None and 0 < len(lp.pairs) <= MILP_MAX_PAIRS:
        mip = solve_milp(problem, milp_seconds, lp.pairs)
    truth_v, oracle = None, None
    if truth is not None:
        matrix = truth([r.customer_id or "" for r in planned], offer_ids, channel, at)
        truth_v = matrix[problem.customer, problem.offer]
        # what the same limits allow with perfect scores: LP and greedy on the truth's values
        best = build_problem(planned, offer_ids, costs, limits, channel, left, matrix)
        best_lp = solve_lp(best)
        oracle = {"lp": _summary(best_lp, None), "greedy": _summary(greedy(best, seed=seed), None)}
        if best_lp.pairs is not None and 0 < len(best_lp.pairs) <= MILP_MAX_PAIRS:
            oracle["milp"] = _summary(solve_milp(best, milp_seconds, best_lp.pairs), None)
    offer_of: dict[int, str] = {
        int(problem.customer[j]): offer_ids[int(problem.offer[j])]
        for j in np.flatnonzero(lp.chosen)
    }
    rows = [_decided(r, offer_of.get(i), run_id) for i, r in enumerate(planned)]
    valid_from = limits.period.valid_from if limits.period else at
    valid_until = (
        limits.period.valid_until if limits.period
        else datetime.combine(at.date() + timedelta(days=1), dtime(0), tzinfo=at.tzinfo)
    )  # fmt: skip
    with deps.ledger.engine.begin() as conn:
        stale = {r.decision_id for r in deps.ledger.record_decisions_in(conn, rows)}
        messages = [
            _message(r, offers[r.offer_id], at, run_id)
            for r in rows
            if r.decision_id not in stale and r.status == "pending"
        ]
        if messages:  # their decisions carry status pending already: not shown until sent
            conn.execute(insert(outbox), messages)
        store_prices(conn, run_id, lp.prices, valid_from, valid_until, at)
    deps.assigner.flush()  # the holdout draws of new customers, recorded before we return
    return {
        "run_id": run_id,
        "channel": channel,
        "customers": len(customers),
        "holdout": sum(r.arm == "holdout" for r in planned),
        "candidates": int(len(problem.value)),
        "values": value_summary(planned),
        "capacity_left": left,
        "lp": _summary(lp, truth_v),
        "greedy": _summary(base, truth_v),
        "milp": _summary(mip, truth_v) if mip is not None else None,
        "oracle": oracle,
        "prices": [
            {"kind": k, "key": key, "price": round(p, 6)} for (k, key), p in lp.prices.items()
        ],
        "prices_valid": [valid_from.isoformat(), valid_until.isoformat()],
        "decisions": len(rows) - len(stale),
        "messages": len(messages),
        "stale": len(stale),
        "plan_seconds": round(t_plan, 3),
        "seconds": round(time.perf_counter() - start, 3),
    }
