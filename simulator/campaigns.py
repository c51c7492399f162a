"""Past campaigns with a randomised holdout: exposures with treated and untreated outcomes.

Each offer runs a campaign every 35 days on a rotating channel, so attribution windows of one
offer never overlap for a person. The audience is random among the eligible, reachable and
consenting, and 20% of it is held out at random, so treated-vs-holdout differences are causal.
Conversions are drawn from the response model (``simulator.response``) and written as purchase
events of the offer's product (``simulator.conversions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from offers.catalog import Catalog, Offer
from simulator.buffer import EventBuffer
from simulator.clock import START_US, US_PER_DAY, last_before
from simulator.consent import Consent
from simulator.conversions import organic_offer_purchases, write_conversions
from simulator.events import MINUTE, Baskets, active_end
from simulator.identities import Keys
from simulator.lifecycle import identifiers
from simulator.people import Population, profile_at
from simulator.response import CHANNEL_IDS, OFFER_IDS, WINDOW_DAYS, conversion_probs, features_at

CAMPAIGN_CHANNELS = ("email", "sms", "call_centre", "web", "app")
HOLDOUT_SHARE = 0.2
SPACING_DAYS = 35
REACH = {"email": 0.6, "sms": 0.45, "call_centre": 0.15, "web": 0.7, "app": 0.7}
OPEN_BASKET_DAYS = 7


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    offer_id: str
    channel: str
    day: int


def plan_campaigns(catalog: Catalog, days: int) -> list[Campaign]:
    """Every offer, every SPACING_DAYS, rotating over its campaign channels. Each window of
    WINDOW_DAYS ends inside the history when it is long enough; shorter histories still get
    one campaign per offer in their first days, with windows censored at the end."""
    last_day = max(days - WINDOW_DAYS - 1, min(days - 1, 10))
    plans = []
    for i, offer in enumerate(o for o in catalog.offers if o.product_id):
        chans = [c for c in CAMPAIGN_CHANNELS if c in offer.channels]
        for k, day in enumerate(range(1 + (3 * i) % 10, last_day + 1, SPACING_DAYS)):
            ch = chans[(i + k) % len(chans)]
            plans.append(Campaign(f"cmp_{day:03d}_{offer.id}_{ch}", offer.id, ch, day))
    return sorted(plans, key=lambda c: (c.day, c.campaign_id))


def _candidates(
    rng: np.random.Generator, c: Campaign, n: int, sessions: dict[str, tuple]
) -> tuple[np.ndarray, np.ndarray]:
    """(person, ts): everyone for pushes (office hours); the week's visitors for web/app."""
    day0 = START_US + c.day * US_PER_DAY
    if c.channel in ("web", "app"):
        person, ts = sessions[c.channel]
        m = (ts >= day0) & (ts < day0 + 7 * US_PER_DAY)
        first = np.unique(person[m], return_index=True)[1]  # sessions are time-sorted
        return person[m][first], ts[m][first]
    spread = 5 if c.channel == "call_centre" else 1
    hour = rng.uniform(9, 18 if c.channel == "call_centre" else 11, n)
    ts = day0 + rng.integers(0, spread, n) * US_PER_DAY + (hour * 3600e6).astype(np.int64)
    return np.arange(n), ts


def open_basket_at(baskets: Baskets, person: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """The context ``open_basket``: an abandoned basket in the OPEN_BASKET_DAYS before ``ts``."""
    prev = last_before(baskets.person, baskets.ts, person, ts)
    return (prev >= 0) & (ts - prev <= OPEN_BASKET_DAYS * US_PER_DAY)


def simulate_campaigns(
    rng: np.random.Generator,
    pop: Population,
    keys: Keys,
    catalog: Catalog,
    days: int,
    baskets: Baskets,
    sessions: dict[str, tuple],
    buf: EventBuffer,
) -> pd.DataFrame:
    """Run every planned campaign in time order; return the exposures (treated and holdout)."""
    consent = Consent(rng, pop, keys)
    consent.simulate_history(rng, pop, days, buf)
    rows = [
        _run(rng, c, catalog.get(c.offer_id), pop, keys, days, baskets, sessions, consent, buf)
        for c in plan_campaigns(catalog, days)
    ]
    ex = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=_COLUMNS)
    ex = ex.sort_values(["ts", "campaign_id"], kind="stable").reset_index(drop=True)
    organic_offer_purchases(rng, pop, keys, catalog, days, ex, buf)
    return ex


_COLUMNS = [
    "ts", "campaign_id", "offer_id", "channel", "arm", "email", "phone", "login_id", "cookie_id",
    "open_basket", "person", "true_p_treated", "true_p_untreated", "converted", "converted_at",
]  # fmt: skip


def _run(
    rng: np.random.Generator,
    c: Campaign,
    offer: Offer,
    pop: Population,
    keys: Keys,
    days: int,
    baskets: Baskets,
    sessions: dict[str, tuple],
    consent: Consent,
    buf: EventBuffer,
) -> pd.DataFrame:
    """One campaign: audience, random arms, true response, conversions, treatment contacts."""
    p = pop.people
    end = START_US + days * US_PER_DAY
    alive_until = active_end(pop, days)
    person, ts = _candidates(rng, c, len(p), sessions)
    ok = (ts < alive_until[person]) & (ts < end) & consent.ok(c.channel, person, ts)
    ok &= offer.eligible_mask(profile_at(p, person, ts, pop.plans))
    ok &= rng.random(len(person)) < REACH[c.channel]
    if c.channel in ("email", "sms"):
        ok &= (keys.email if c.channel == "email" else keys.mobile)[person] != None  # noqa: E711
    person, ts = person[ok], ts[ok]
    k = len(person)
    treated = rng.random(k) >= HOLDOUT_SHARE
    basket = open_basket_at(baskets, person, ts)
    x, averse = features_at(p, person, ts, basket)
    o_idx, c_idx = np.full(k, OFFER_IDS.index(c.offer_id)), np.full(k, CHANNEL_IDS.index(c.channel))
    p1, p0 = conversion_probs(x, averse, o_idx, c_idx)
    converted = rng.random(k) < np.where(treated, p1, p0)
    # the treated act soon after the prompt; the untreated at any time in the window
    delay = np.where(treated, rng.exponential(3.0, k) % WINDOW_DAYS, rng.uniform(0, WINDOW_DAYS, k))
    conv_at = ts + (delay * US_PER_DAY).astype(np.int64)
    late = conv_at >= alive_until[person]  # bought before leaving
    span = alive_until[person[late]] - ts[late]
    conv_at[late] = ts[late] + (rng.random(int(late.sum())) * span).astype(np.int64)
    converted &= conv_at < end  # windows cut by the end of the history are censored
    ids = identifiers(rng, keys, person, c.channel)
    _contacts(rng, c, consent, person[treated], ts[treated], converted[treated],
              {k_: v[treated] for k_, v in ids.items()}, p, buf)  # fmt: skip
    write_conversions(rng, keys, offer, person[converted], conv_at[converted],
                      treated[converted], c.channel, c.campaign_id, buf)  # fmt: skip
    return pd.DataFrame(
        {
            "ts": ts, "campaign_id": c.campaign_id, "offer_id": c.offer_id, "channel": c.channel,
            "arm": np.where(treated, "treatment", "holdout"),
            "email": keys.email[person] if c.channel == "email" else None,
            "phone": ids.get("phone") if c.channel in ("sms", "call_centre") else None,
            "login_id": ids.get("login_id"), "cookie_id": ids.get("cookie_id"),
            "open_basket": basket, "person": person, "true_p_treated": p1,
            "true_p_untreated": p0, "converted": converted,
            "converted_at": np.where(converted, conv_at, -1),
        }
    )  # fmt: skip


def _contacts(
    rng: np.random.Generator,
    c: Campaign,
    consent: Consent,
    person: np.ndarray,
    ts: np.ndarray,
    converted: np.ndarray,
    ids: dict[str, np.ndarray],
    p: pd.DataFrame,
    buf: EventBuffer,
) -> None:
    """Treatment contacts: sends, opens and clicks (buyers click more), then opt-outs.
    On-site (web/app) exposures are banners inside a session: no extra event."""
    k = len(person)
    cid = c.campaign_id
    if c.channel == "email":
        tech = p["tech_affinity"].to_numpy()[person]
        averse = p["contact_aversion"].to_numpy()[person]
        buf.add(ts, person, "email", "email_send", campaign_id=cid, email=ids["email"])
        click = rng.random(k) < np.where(converted, 0.55, 0.03)
        opened = click | (rng.random(k) < 0.15 + 0.35 * tech * (1 - 0.5 * averse))
        ot = ts + (rng.exponential(0.5, k) * US_PER_DAY).astype(np.int64)
        for etype, m, dt in (("email_open", opened, 0), ("email_click", click, 2 * MINUTE)):
            buf.add(ot[m] + dt, person[m], "email", etype, campaign_id=cid, email=ids["email"][m])
    elif c.channel == "sms":
        buf.add(ts, person, "sms", "sms_send", campaign_id=cid, phone=ids["phone"])
        click = rng.random(k) < np.where(converted, 0.45, 0.02)
        buf.add(ts[click] + 20 * MINUTE, person[click], "sms", "sms_click", campaign_id=cid,
                phone=ids["phone"][click])  # fmt: skip
    elif c.channel == "call_centre":
        buf.add(ts, person, "call_centre", "call_contact", campaign_id=cid, **ids)
    if c.channel in ("email", "sms"):
        averse = p["contact_aversion"].to_numpy()[person]
        consent.opt_out(rng, c.channel, person, ts, averse, buf)
