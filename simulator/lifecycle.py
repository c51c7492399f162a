"""The customer lifecycle, day by day: complaints, disengagement, churn, contract renewals, usage.

The only stage with state carried between days (a complaint raises tomorrow's hazard, a renewal
moves the contract end), so it loops over days and vectorises over people. The hazards are the
formulas of ``simulator.response``, which the truth API evaluates again.
"""

from __future__ import annotations

import numpy as np

from simulator.buffer import EventBuffer
from simulator.clock import START_US, US_PER_DAY
from simulator.identities import Keys
from simulator.people import Population, months_between
from simulator.response import churn_hazard, onset_hazard

USAGE_DROP = 0.35  # usage after disengaging, relative to normal
RENEWAL_MONTHS = 24


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

    for d in range(days):
        t = START_US + d * US_PER_DAY
        alive = churned < 0
        ml = months_between(np.full(n, t), contract_end)
        dsc = np.where(last_complaint >= 0, (t - last_complaint) / US_PER_DAY, np.nan)
        is_dis = (disengaged >= 0) & (disengaged <= t)
        u = rng.random((4, n))
        jitter = (rng.random(n) * US_PER_DAY).astype(np.int64)

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
        contract_end[renew] = t + jitter[renew] + int(RENEWAL_MONTHS * 30.4375 * US_PER_DAY)

    p["contract_end"] = contract_end
    p["prior_contract_end"] = prior_end
    p["renewed_at"] = renewed
    p["disengaged_at"] = disengaged
    p["churned_at"] = churned

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
            value=p["arpu"].to_numpy()[m],
            **identifiers(rng, keys, m, ch),
        )
    _usage(rng, pop, keys, days, buf)


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
