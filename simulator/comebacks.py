"""Abandoned baskets that come back on their own, and how that rate is measured.

The seed figure: about 21% of baskets abandoned with no contact are bought within 30 days. A
marketing contact in the window raises the chance, so comebacks are drawn after the campaigns.
``comeback_rate`` measures the figure from events alone, the way an analyst would.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.buffer import EventBuffer
from simulator.clock import US_PER_DAY, first_after, to_us
from simulator.events import MINUTE, RETAIL_IDS, Baskets, active_end, checkout_ids
from simulator.identities import Keys
from simulator.lifecycle import identifiers
from simulator.people import Population

# Chance an abandoned basket comes back by itself within 30 days. Ordinary purchases of the same
# product add ~5 points, so the measured no-contact rate (``comeback_rate``) is ~21%.
COMEBACK_P = 0.165
# A marketing contact in the window raises it by a quarter: ~4 points, 5-10x what a calendar
# campaign adds (the act-on-intent lift users report; ``simulator.calibration`` checks it).
CONTACT_BOOST = 1.25
COMEBACK_MEAN_DAYS = 5.0
CONTACT_TYPES = ("email_send", "sms_send", "call_contact")


def comeback_probs(price_sensitivity: np.ndarray, contacted: np.ndarray | bool) -> np.ndarray:
    """True chance an abandoned basket comes back by itself within 30 days: the price-sensitive
    less often; a marketing contact in the window multiplies it by CONTACT_BOOST."""
    base = COMEBACK_P * (0.7 + 0.6 * (1 - np.asarray(price_sensitivity, dtype=float)))
    return base * np.where(contacted, CONTACT_BOOST, 1.0)


def add_comebacks(
    rng: np.random.Generator,
    pop: Population,
    keys: Keys,
    days: int,
    baskets: Baskets,
    contact_person: np.ndarray,
    contact_ts: np.ndarray,
    buf: EventBuffer,
) -> None:
    """Draw each abandoned basket's comeback; write session, checkout and purchase events."""
    nxt = first_after(contact_person, contact_ts, baskets.person, baskets.ts)
    contacted = (nxt >= 0) & (nxt <= baskets.ts + 30 * US_PER_DAY)
    price = pop.people["price_sensitivity"].to_numpy()[baskets.person]
    prob = comeback_probs(price, contacted)
    back = rng.random(len(prob)) < prob
    trunc = 1 - np.exp(-30 / COMEBACK_MEAN_DAYS)
    delay = -COMEBACK_MEAN_DAYS * np.log(1 - rng.random(len(prob)) * trunc)
    ts = baskets.ts + (delay * US_PER_DAY).astype(np.int64)
    back &= ts < active_end(pop, days)[baskets.person]
    for ch in ("web", "app"):
        m = back & (baskets.channel == ch)
        person, t = baskets.person[m], ts[m]
        ids = identifiers(rng, keys, person, ch)
        kw = {
            "product_id": RETAIL_IDS[baskets.product[m]],
            "value": baskets.price[m],
            "quantity": 1,
        }
        buf.add(t, person, ch, "session_start", **ids)
        cids = checkout_ids(keys, person, ids)
        buf.add(t + 2 * MINUTE, person, ch, "checkout", **kw, **cids)
        buf.add(t + 3 * MINUTE, person, ch, "purchase", **kw, **cids)


def basket_outcomes(
    events: pd.DataFrame, window_days: int = 30, abandon_minutes: int = 60
) -> pd.DataFrame:
    """One row per basket add whose window ends inside the history: who, whether it was
    abandoned (no checkout within ``abandon_minutes``, not removed), whether a marketing contact
    reached the person within ``window_days``, and whether the product was bought in that time."""
    ev = events[["ts", "event_type", "product_id", "campaign_id", "true_person_id"]]
    ev = ev.assign(t=to_us(ev["ts"])).sort_values("t", kind="stable")
    end = int(ev["t"].max())
    win = window_days * US_PER_DAY
    adds = ev[ev.event_type == "basket_add"][["t", "true_person_id", "product_id"]]
    adds = adds[adds.t + win <= end]

    def _next(kind: pd.DataFrame, by: list[str]) -> np.ndarray:
        right = kind[["t", *by]].assign(nxt=kind["t"])
        m = pd.merge_asof(
            adds, right, on="t", by=by, direction="forward", allow_exact_matches=False
        )
        return m["nxt"].to_numpy()

    def of(*types: str) -> pd.DataFrame:
        return ev[ev.event_type.isin(types)]

    contacts = of(*CONTACT_TYPES)
    t = adds["t"].to_numpy()
    grace = t + abandon_minutes * MINUTE
    abandoned = ~(_next(of("checkout"), ["true_person_id"]) <= grace) & ~(
        _next(of("basket_remove"), ["true_person_id", "product_id"]) <= grace
    )
    contacted = _next(contacts[contacts.campaign_id.notna()], ["true_person_id"]) <= t + win
    back = _next(of("purchase"), ["true_person_id", "product_id"]) <= t + win
    return pd.DataFrame(
        {
            "true_person_id": adds["true_person_id"].to_numpy(),
            "abandoned": abandoned,
            "contacted": contacted,
            "back": back,
        }
    )


def comeback_rate(events: pd.DataFrame, window_days: int = 30, abandon_minutes: int = 60) -> dict:
    """Share of abandoned baskets (no checkout within ``abandon_minutes``, not removed) whose
    product the same person buys within ``window_days`` with no marketing contact meanwhile.
    Baskets whose window runs past the last event are left out (their outcome is unknown)."""
    b = basket_outcomes(events, window_days, abandon_minutes)
    back = b["back"].to_numpy()
    quiet = (b["abandoned"] & ~b["contacted"]).to_numpy()
    loud = (b["abandoned"] & b["contacted"]).to_numpy()
    n = int(quiet.sum())
    return {
        "abandoned": int(b["abandoned"].sum()),
        "abandoned_no_contact": n,
        "comeback_rate": float(back[quiet].mean()) if n else float("nan"),
        "comeback_rate_contacted": float(back[loud].mean()) if loud.any() else float("nan"),
    }
