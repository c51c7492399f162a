"""Purchases of offer products: campaign conversions, and the same products bought unprompted.

Outside campaign windows offer products sell at the untreated rate ``p_untreated`` (as a
constant daily hazard over the 30-day window), so a model sees organic demand too; inside a
window the campaign's own draw is the only source, which keeps ``converted`` exact.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from offers.catalog import Catalog, Offer
from simulator.buffer import EventBuffer
from simulator.clock import START_US, US_PER_DAY, last_before
from simulator.events import active_end, active_start
from simulator.identities import Keys
from simulator.lifecycle import identifiers
from simulator.people import Population, profile_at
from simulator.response import CHANNEL_IDS, OFFER_IDS, WINDOW_DAYS, conversion_probs, features_at

ATTRIBUTED = 0.6  # share of treated conversions whose purchase carries the campaign_id


def write_conversions(
    rng: np.random.Generator,
    keys: Keys,
    offer: Offer,
    person: np.ndarray,
    at: np.ndarray,
    treated: np.ndarray,
    campaign_channel: str | None,
    campaign_id: str | None,
    buf: EventBuffer,
) -> None:
    """Purchase events of the offer's product; treated ones are worth value minus cost."""
    k = len(person)
    via = rng.choice(["web", "app", "store", "call_centre"], k, p=[0.45, 0.2, 0.25, 0.1])
    via[(via == "app") & (keys.login_id[person] == None)] = "web"  # noqa: E711
    if campaign_channel in ("web", "app", "call_centre"):
        via[treated & (rng.random(k) < 0.7)] = campaign_channel
    attributed = treated & (rng.random(k) < ATTRIBUTED)
    for ch in ("web", "app", "store", "call_centre"):
        s = via == ch
        ids = identifiers(rng, keys, person[s], ch)
        if ch in ("web", "app"):  # buying online needs the account, or a guest e-mail
            ids["login_id"] = keys.login_id[person[s]]
            ids["email"] = np.where(ids["login_id"] == None, keys.email[person[s]], None)  # noqa: E711
        value = np.where(treated[s], offer.value - offer.cost, offer.value)
        cid = np.where(attributed[s], campaign_id, None)
        buf.add(at[s], person[s], ch, "purchase", product_id=offer.product_id, quantity=1,
                value=value, campaign_id=cid, **ids)  # fmt: skip


def organic_offer_purchases(
    rng: np.random.Generator,
    pop: Population,
    keys: Keys,
    catalog: Catalog,
    days: int,
    exposures: pd.DataFrame,
    buf: EventBuffer,
) -> None:
    """Offer products bought with no campaign, outside every campaign window of that offer."""
    p = pop.people
    n = len(p)
    idx = np.arange(n)
    start = active_start(pop)  # a new customer's demand is a new customer's
    x, averse = features_at(p, idx, start, np.zeros(n, dtype=bool))
    profile = profile_at(p, idx, start, pop.plans)
    end = active_end(pop, days)
    web = np.full(n, CHANNEL_IDS.index("web"))
    for offer in (o for o in catalog.offers if o.product_id):
        _, p0 = conversion_probs(x, averse, np.full(n, OFFER_IDS.index(offer.id)), web)
        rate = -np.log1p(-p0 * offer.eligible_mask(profile)) / WINDOW_DAYS
        person = np.repeat(idx, rng.poisson(rate * (end - START_US) / US_PER_DAY))
        ts = START_US + (rng.random(len(person)) * (end[person] - START_US)).astype(np.int64)
        e = exposures[exposures.offer_id == offer.id]
        prev = last_before(e["person"].to_numpy(), e["ts"].to_numpy(), person, ts)
        free = ~((prev >= 0) & (ts - prev <= WINDOW_DAYS * US_PER_DAY)) & (ts > start[person])
        k = int(free.sum())
        write_conversions(rng, keys, offer, person[free], ts[free], np.zeros(k, dtype=bool),
                          None, None, buf)  # fmt: skip
