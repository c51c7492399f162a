"""Organic activity on every channel: sessions, views, baskets, purchases, calls, store visits.

Counts are Poisson over each person's active span, times uniform within it: no per-event Python
loops. Abandoned baskets are returned for ``simulator.comebacks``, drawn after the campaigns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.buffer import EventBuffer
from simulator.clock import START_US, US_PER_DAY, US_PER_SECOND
from simulator.identities import Keys
from simulator.lifecycle import identifiers
from simulator.people import Population

RETAIL = {  # product_id -> price; the shop's everyday catalogue (offers sell their own products)
    "acc_case": 19.99,
    "acc_charger": 24.99,
    "acc_earbuds": 79.0,
    "acc_screen": 14.99,
    "acc_powerbank": 34.99,
    "dev_tablet": 329.0,
    "dev_watch": 249.0,
    "dev_phone_refurb": 299.0,
    "dev_router": 89.0,
    "sim_only": 10.0,
}
RETAIL_IDS = np.array(list(RETAIL), dtype=object)
RETAIL_PRICE = np.array(list(RETAIL.values()))
_W = np.array([16, 14, 10, 12, 9, 4, 5, 5, 5, 8], dtype=float)
RETAIL_WEIGHT = _W / _W.sum()
BASKET_P = 0.09  # chance a browsing session adds to basket
IN_SESSION_CHECKOUT = 0.3
MINUTE = 60 * US_PER_SECOND


@dataclass
class Baskets:
    """Abandoned baskets, waiting for the comeback draw."""

    person: np.ndarray
    ts: np.ndarray
    product: np.ndarray
    price: np.ndarray
    channel: np.ndarray


def active_start(pop: Population) -> np.ndarray:
    """When each person starts doing anything: the window's start, or their sign-up inside it
    (``simulator.joiners``)."""
    return np.maximum(pop.people["tenure_start"].to_numpy(), START_US)


def active_end(pop: Population, days: int) -> np.ndarray:
    end = START_US + days * US_PER_DAY
    churned = pop.people["churned_at"].to_numpy()
    return np.where(churned >= 0, churned, end)


def _arrivals(
    rng: np.random.Generator, pop: Population, rate: np.ndarray, days: int, quiet: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson arrival times per person over [sign-up, churn or end]; thinned once disengaged.
    Drawn over [window start, churn or end] and cut to the sign-up (a Poisson process on the
    shorter span), so new customers do not change what the others draw."""
    end = active_end(pop, days)
    span = (end - START_US) / US_PER_DAY
    count = rng.poisson(rate * span)
    person = np.repeat(np.arange(len(rate)), count)
    ts = START_US + (rng.random(len(person)) * (end[person] - START_US)).astype(np.int64)
    dis = pop.people["disengaged_at"].to_numpy()[person]
    keep = ~((dis >= 0) & (ts > dis) & (rng.random(len(ts)) > quiet))
    keep &= ts > active_start(pop)[person]
    return person[keep], ts[keep]


def _take(ids: dict[str, np.ndarray], m: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[m] for k, v in ids.items()}


def checkout_ids(keys: Keys, person: np.ndarray, ids: dict[str, np.ndarray]) -> dict:
    """Checkout needs an account (login) or, for guests, an e-mail address."""
    out = dict(ids)
    login = keys.login_id[person]
    out["login_id"] = login
    out["email"] = np.where(login == None, keys.email[person], None)  # noqa: E711
    return out


def simulate_activity(
    rng: np.random.Generator, pop: Population, keys: Keys, days: int, buf: EventBuffer
) -> Baskets:
    """Browsing, baskets, purchases, calls and store visits; returns the abandoned baskets."""
    p = pop.people
    tech = p["tech_affinity"].to_numpy()
    price = p["price_sensitivity"].to_numpy()
    has_app = p["has_app"].to_numpy() & (keys.login_id != None)  # noqa: E711
    abandoned: list[Baskets] = []
    for ch, rate in (("web", 0.04 + 0.22 * tech), ("app", has_app * (0.05 + 0.35 * tech))):
        person, ts = _arrivals(rng, pop, rate, days)
        ids = identifiers(rng, keys, person, ch)
        buf.add(ts, person, ch, "session_start", **ids)
        views = 1 + rng.poisson(1.2, len(ts))
        vp = np.repeat(np.arange(len(ts)), views)
        step = np.arange(len(vp)) - np.repeat(np.cumsum(views) - views, views)
        vt = ts[vp] + (step + 1) * (rng.integers(20, 90, len(vp)) * US_PER_SECOND)
        prod = rng.choice(len(RETAIL_IDS), len(vp), p=RETAIL_WEIGHT)
        buf.add(
            vt,
            person[vp],
            ch,
            "product_view",
            product_id=RETAIL_IDS[prod],
            value=RETAIL_PRICE[prod],
            **_take(ids, vp),
        )
        last = np.cumsum(views) - 1  # last view of each session: what goes in the basket
        adds = np.flatnonzero(rng.random(len(ts)) < BASKET_P * (0.7 + 0.6 * price[person]))
        at = vt[last[adds]] + MINUTE
        bp = prod[last[adds]]
        buf.add(
            at,
            person[adds],
            ch,
            "basket_add",
            product_id=RETAIL_IDS[bp],
            value=RETAIL_PRICE[bp],
            quantity=1,
            **_take(ids, adds),
        )
        extra = rng.random(len(adds)) < 0.15  # a second item added then removed
        xp = rng.choice(len(RETAIL_IDS), int(extra.sum()), p=RETAIL_WEIGHT)
        for etype, dt in (("basket_add", 2), ("basket_remove", 4)):
            buf.add(
                at[extra] + dt * MINUTE,
                person[adds[extra]],
                ch,
                etype,
                product_id=RETAIL_IDS[xp],
                value=RETAIL_PRICE[xp],
                quantity=1,
                **_take(ids, adds[extra]),
            )
        buy = rng.random(len(adds)) < IN_SESSION_CHECKOUT
        co = adds[buy]
        cids = checkout_ids(keys, person[co], _take(ids, co))
        for etype, dt in (("checkout", 6), ("purchase", 7)):
            buf.add(
                at[buy] + dt * MINUTE,
                person[co],
                ch,
                etype,
                product_id=RETAIL_IDS[bp[buy]],
                value=RETAIL_PRICE[bp[buy]],
                quantity=1,
                **cids,
            )
        ab = ~buy
        abandoned.append(
            Baskets(
                person[adds[ab]],
                at[ab],
                bp[ab],
                RETAIL_PRICE[bp[ab]],
                np.full(int(ab.sum()), ch, dtype=object),
            )
        )
    _intent_purchases(rng, pop, keys, days, buf)
    _contacts(rng, pop, keys, days, buf)
    return Baskets(
        *(
            np.concatenate([getattr(b, f) for b in abandoned])
            for f in ("person", "ts", "product", "price", "channel")
        )
    )


def _intent_purchases(
    rng: np.random.Generator, pop: Population, keys: Keys, days: int, buf: EventBuffer
) -> None:
    """The baseline purchase rate: people who come to buy, online or in store."""
    person, ts = _arrivals(rng, pop, pop.people["base_purchase_rate"].to_numpy(), days, quiet=0.6)
    prod = rng.choice(len(RETAIL_IDS), len(ts), p=RETAIL_WEIGHT)
    where = rng.choice(["web", "app", "store"], len(ts), p=[0.45, 0.2, 0.35])
    where[(where == "app") & ~pop.people["has_app"].to_numpy()[person]] = "web"
    for ch in ("web", "app", "store"):
        m = where == ch
        pm, tm, pr = person[m], ts[m], prod[m]
        ids = identifiers(rng, keys, pm, ch)
        kw = {"product_id": RETAIL_IDS[pr], "value": RETAIL_PRICE[pr], "quantity": 1}
        if ch == "store":
            buf.add(tm, pm, ch, "store_visit", **ids)
            buf.add(tm + 10 * MINUTE, pm, ch, "purchase", **kw, **ids)
            continue
        buf.add(tm, pm, ch, "session_start", **ids)
        buf.add(tm + MINUTE, pm, ch, "product_view", **kw, **ids)
        buf.add(tm + 2 * MINUTE, pm, ch, "basket_add", **kw, **ids)
        cids = checkout_ids(keys, pm, ids)
        buf.add(tm + 4 * MINUTE, pm, ch, "checkout", **kw, **cids)
        buf.add(tm + 5 * MINUTE, pm, ch, "purchase", **kw, **cids)


def _contacts(
    rng: np.random.Generator, pop: Population, keys: Keys, days: int, buf: EventBuffer
) -> None:
    """Inbound calls and store visits without a purchase."""
    p = pop.people
    person, ts = _arrivals(rng, pop, 0.006 + 0.01 * p["price_sensitivity"].to_numpy(), days)
    buf.add(
        ts, person, "call_centre", "call_contact", **identifiers(rng, keys, person, "call_centre")
    )
    person, ts = _arrivals(rng, pop, 0.008 + 0.012 * (1 - p["tech_affinity"].to_numpy()), days)
    buf.add(ts, person, "store", "store_visit", **identifiers(rng, keys, person, "store"))
