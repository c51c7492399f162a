"""The customer lifecycle, day by day: plan changes, complaints, disengagement, churn, contract
renewals, usage.

The only stages with state carried between days (a complaint raises tomorrow's hazard, a renewal
moves the contract end, an upgrade changes what the next change can be), so they loop over days
and vectorise over people. The hazards are the formulas of ``simulator.response``, which the
truth API evaluates again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.buffer import EventBuffer
from simulator.clock import DAYS_PER_MONTH, START_US, US_PER_DAY
from simulator.identities import Keys
from simulator.people import PLAN_ARPU, PLANS, PlanHistory, Population, months_between
from simulator.response import churn_hazard, onset_hazard

USAGE_DROP = 0.35  # usage after disengaging, relative to normal
RENEWAL_MONTHS = 24
# Daily rates of CRM changes (a minority of customers change over a few months): a data-hungry
# postpaid customer moves up a tier, a price-sensitive one down (three times as often once out
# of contract); any customer's bill drifts when bolt-ons come and go. Prepaid stays prepaid.
UPGRADE_RATE = 0.0006
DOWNGRADE_RATE = 0.0003
OUT_OF_CONTRACT_DOWNGRADE = 3.0
ARPU_DRIFT_RATE = 0.0008
ARPU_DRIFT_SIGMA = 0.08


def simulate_plan_changes(rng: np.random.Generator, pop: Population, days: int) -> None:
    """Set ``pop.plans``: each person's plan and ARPU at sign-up, then dated upgrades,
    downgrades and ARPU drifts over the simulated days. A plan change keeps the person's own
    price factor (ARPU over the tier's list price); :func:`simulate_lifecycle` later drops the
    changes after a churn and sets the people table's plan and ARPU to the latest (the CRM's
    current extract)."""
    p = pop.people
    n = len(p)
    tier = pd.Index(PLANS).get_indexer(p["plan"].to_numpy())
    list_price = np.array([PLAN_ARPU[x] for x in PLANS])
    factor = p["arpu"].to_numpy() / list_price[tier]
    up = UPGRADE_RATE * (0.5 + p["data_hunger"].to_numpy())
    down = DOWNGRADE_RATE * (0.5 + p["price_sensitivity"].to_numpy())
    contract_end = p["contract_end"].to_numpy()
    tenure = p["tenure_start"].to_numpy()
    rows = [(np.arange(n), tenure, tier.copy(), factor.copy())]
    for d in range(days):
        t = START_US + d * US_PER_DAY
        u = rng.random((3, n))
        jitter = (rng.random(n) * US_PER_DAY).astype(np.int64)
        joined = tenure < t + jitter  # a new customer's plan holds from sign-up
        out_of_contract = (contract_end >= 0) & (contract_end <= t)
        down_rate = down * np.where(out_of_contract, OUT_OF_CONTRACT_DOWNGRADE, 1.0)
        upgrade = joined & (tier >= 1) & (tier < len(PLANS) - 1) & (u[0] < up)
        downgrade = joined & ~upgrade & (tier >= 2) & (u[1] < down_rate)
        drift = joined & ~upgrade & ~downgrade & (u[2] < ARPU_DRIFT_RATE)
        tier = tier + upgrade - downgrade
        factor = np.where(drift, factor * np.exp(ARPU_DRIFT_SIGMA * rng.standard_normal(n)), factor)
        moved = np.flatnonzero(upgrade | downgrade | drift)
        rows.append((moved, t + jitter[moved], tier[moved], factor[moved]))
    person, valid_from, tiers, factors = (np.concatenate(c) for c in zip(*rows, strict=True))
    pop.plans = PlanHistory(
        person.astype(np.int64),
        valid_from.astype(np.int64),
        np.asarray(PLANS, dtype=object)[tiers],
        np.round(list_price[tiers] * factors, 2),
    )


def _close_plans(pop: Population, churned: np.ndarray) -> None:
    """Drop plan changes at or after a churn; the people table keeps the latest plan."""
    h = pop.plans
    if h is None:
        return
    gone = churned[h.person]
    keep = (gone < 0) | (h.valid_from < gone)  # a sign-up row is always before the churn
    pop.plans = PlanHistory(h.person[keep], h.valid_from[keep], h.plan[keep], h.arpu[keep])
    pop.people["plan"], pop.people["arpu"] = pop.plans.last(len(pop.people))


def complaint_rate(price: np.ndarray, loyalty: np.ndarray) -> np.ndarray:
    """Daily complaint probability of an engaged customer."""
    return 0.0012 * (0.4 + price + (1.0 - loyalty))


def simulate_lifecycle(
    rng: np.random.Generator, pop: Population, keys: Keys, days: int, buf: EventBuffer
) -> None:
    """Fill churned_at/disengaged_at/renewed_at/contract_end in ``pop.people``; emit events."""
    p = pop.people
    n = len(p)
    base = p["churn_base_hazard"].to_numpy()
    postpaid = p["plan"].to_numpy() != "prepaid"
    c_rate = complaint_rate(p["price_sensitivity"].to_numpy(), p["loyalty"].to_numpy())
    renew_rate = 0.012 * (0.5 + p["loyalty"].to_numpy())
    contract_end = p["contract_end"].to_numpy().copy()
    prior_end = np.full(n, -1, dtype=np.int64)
    renewed = np.full(n, -1, dtype=np.int64)
    disengaged = np.full(n, -1, dtype=np.int64)
    churned = np.full(n, -1, dtype=np.int64)
    last_complaint = np.full(n, -1, dtype=np.int64)
    complaints: list[tuple[np.ndarray, np.ndarray]] = []

    tenure = p["tenure_start"].to_numpy()
    for d in range(days):
        t = START_US + d * US_PER_DAY
        ml = months_between(np.full(n, t), contract_end)
        dsc = np.where(last_complaint >= 0, (t - last_complaint) / US_PER_DAY, np.nan)
        is_dis = (disengaged >= 0) & (disengaged <= t)
        u = rng.random((4, n))
        jitter = (rng.random(n) * US_PER_DAY).astype(np.int64)
        alive = (churned < 0) & (tenure < t + jitter)  # a new customer acts from sign-up on

        comp = alive & (u[0] < c_rate * np.where(is_dis, 2.5, 1.0))
        onset = alive & (disengaged < 0) & (u[1] < onset_hazard(base, ml, dsc))
        churn = alive & (u[2] < churn_hazard(base, ml, dsc, is_dis))
        renew = (
            alive
            & postpaid
            & ~is_dis
            & ~churn
            & (renewed < 0)
            & (ml <= 1)
            & (ml > -6)
            & (u[3] < renew_rate)
        )
        complaints.append((np.flatnonzero(comp), t + jitter[comp]))
        last_complaint[comp] = t + jitter[comp]
        disengaged[onset] = t + jitter[onset]
        churned[churn] = t + jitter[churn]
        prior_end[renew] = contract_end[renew]
        renewed[renew] = t + jitter[renew]
        contract_end[renew] = t + jitter[renew] + int(RENEWAL_MONTHS * DAYS_PER_MONTH * US_PER_DAY)

    p["contract_end"] = contract_end
    p["prior_contract_end"] = prior_end
    p["renewed_at"] = renewed
    p["disengaged_at"] = disengaged
    p["churned_at"] = churned
    _close_plans(pop, churned)

    # --- events -------------------------------------------------------------------------------
    who = np.concatenate([c[0] for c in complaints]) if complaints else np.zeros(0, np.int64)
    when = np.concatenate([c[1] for c in complaints]) if complaints else np.zeros(0, np.int64)
    via = rng.choice(["call_centre", "web", "store"], len(who), p=[0.7, 0.15, 0.15])
    for ch in ("call_centre", "web", "store"):
        m = via == ch
        buf.add(when[m], who[m], ch, "complaint", **identifiers(rng, keys, who[m], ch))
    idx = np.flatnonzero(churned >= 0)
    buf.add(churned[idx], idx, "call_centre", "churn", phone=keys.mobile[idx])
    idx = np.flatnonzero(renewed >= 0)
    via = rng.choice(["store", "call_centre", "web"], len(idx), p=[0.4, 0.35, 0.25])
    for ch in ("store", "call_centre", "web"):
        m = idx[via == ch]
        buf.add(
            renewed[m],
            m,
            ch,
            "contract_renewal",
            quantity=RENEWAL_MONTHS,
            value=_arpu_at(pop, m, renewed[m]),
            **identifiers(rng, keys, m, ch),
        )
    _usage(rng, pop, keys, days, buf)


def _arpu_at(pop: Population, idx: np.ndarray, at_us: np.ndarray) -> np.ndarray:
    """Each person's ARPU at that moment (the table's when no plan history was drawn)."""
    if pop.plans is None:
        return pop.people["arpu"].to_numpy()[idx]
    return pop.plans.at(idx, at_us)[1]


def _usage(
    rng: np.random.Generator, pop: Population, keys: Keys, days: int, buf: EventBuffer
) -> None:
    """Monthly data usage (GB), keyed by the line's number; it drops once disengaged."""
    p = pop.people
    n = len(p)
    gb_base = (0.5 + 28 * p["data_hunger"].to_numpy() ** 1.5) * np.where(
        p["plan"].to_numpy() == "prepaid", 0.5, 1.0
    )
    offset = rng.integers(0, 30, n)
    months = int(np.ceil(days / 30)) + 1
    person = np.repeat(np.arange(n), months)
    ts = START_US + (
        (offset[person] + 30 * np.tile(np.arange(months), n)) * US_PER_DAY
        + rng.integers(0, US_PER_DAY, n * months)
    )
    churned, dis = p["churned_at"].to_numpy()[person], p["disengaged_at"].to_numpy()[person]
    keep = (ts < START_US + days * US_PER_DAY) & ((churned < 0) | (ts < churned))
    keep &= ts > p["tenure_start"].to_numpy()[person]
    person, ts = person[keep], ts[keep]
    dropped = (dis[keep] >= 0) & (dis[keep] <= ts)
    gb = gb_base[person] * np.where(dropped, USAGE_DROP, 1.0) * rng.lognormal(0, 0.15, len(ts))
    buf.add(ts, person, "app", "usage", value=np.round(gb, 2), phone=keys.mobile[person])


def identifiers(
    rng: np.random.Generator, keys: Keys, person: np.ndarray, channel: str
) -> dict[str, np.ndarray]:
    """The identifiers a channel's system knows about the people it sees."""
    k = len(person)
    if channel in ("web", "app"):
        logged = keys.login_id[person] != None  # noqa: E711
        out: dict[str, np.ndarray] = {"login_id": keys.login_id[person]}
        if channel == "web":
            pick = keys.cookie_offset[person] + (rng.random(k) * keys.cookie_count[person]).astype(
                np.int64
            )
            known = keys.cookie_known[pick]
            out["cookie_id"] = keys.cookie_id[pick]
            out["login_id"] = np.where(
                logged & known & (rng.random(k) < 0.6), keys.login_id[person], None
            )
        return out
    if channel == "email":
        return {"email": keys.email[person]}
    if channel == "sms":
        return {"phone": keys.mobile[person]}
    if channel == "call_centre":
        land = keys.landline[person]
        use_land = (land != None) & ((keys.mobile[person] == None) | (rng.random(k) < 0.25))  # noqa: E711
        return {"phone": np.where(use_land, land, keys.mobile[person])}
    if channel == "store":
        loy = keys.loyalty_id[person]
        return {"loyalty_id": loy, "phone": np.where(loy == None, keys.mobile[person], None)}  # noqa: E711
    return {}
