"""New customers who sign up during the simulated window.

A telco's base turns over: monthly gross adds run at about 1-1.5% of the base, roughly matching
churn (the default world loses ~1.8% a month). ``pick_joiners`` makes a share of the drawn
people sign up inside the window instead of before it, right after the people stage and from
its own child seed, so everyone else keeps their draws. Later stages only act on a person from
``tenure_start`` on (``simulator.events.active_start``); ``sign_up_events`` writes the moment
itself, so a new customer's first events are the sign-up and a first session.
"""

from __future__ import annotations

import numpy as np

from simulator.buffer import EventBuffer
from simulator.clock import DAYS_PER_MONTH, START_US, US_PER_DAY, US_PER_SECOND
from simulator.events import active_end
from simulator.identities import Keys
from simulator.lifecycle import RENEWAL_MONTHS, identifiers
from simulator.people import Population, churn_base_hazard

# Gross adds per month as a share of the base: the top of the 1-1.5% a mature mobile market
# sees, a little under the simulated churn (~1.8% a month), so the base shrinks slowly.
JOIN_RATE_PER_MONTH = 0.015
# Sign-ups stop this many days before the end, so a new customer's 30-day onboarding goal
# window lies inside the history (when the history is longer than that).
GOAL_ROOM_DAYS = 30
MAX_JOINER_SHARE = 0.5  # a long history is still mostly customers who were there before it
# Where people sign up (shops sell most new lines; then online; then telesales).
SIGN_UP_CHANNELS = {"store": 0.5, "web": 0.35, "call_centre": 0.15}
SIGN_UP_EVENT = {"store": "store_visit", "web": "session_start", "call_centre": "call_contact"}
FIRST_SESSION_DAYS = 2.0  # a new account holder opens the app (or the web account) this soon


def join_span_days(days: int) -> int:
    """The days at the start of the history in which people sign up."""
    return days - GOAL_ROOM_DAYS if days > GOAL_ROOM_DAYS else days


def pick_joiners(rng: np.random.Generator, pop: Population, days: int) -> np.ndarray:
    """Make a share of ``pop`` sign up uniformly in the first ``join_span_days`` of the window:
    their tenure starts then, a postpaid contract runs RENEWAL_MONTHS from it (prepaid has
    none), and their base churn hazard is a new customer's. Returns their indices."""
    p = pop.people
    n = len(p)
    span = join_span_days(days)
    share = min(JOIN_RATE_PER_MONTH * span / DAYS_PER_MONTH, MAX_JOINER_SHARE)
    joins = rng.random(n) < share
    at = START_US + (rng.random(n) * span * US_PER_DAY).astype(np.int64)
    idx = np.flatnonzero(joins)
    tenure = p["tenure_start"].to_numpy().copy()
    tenure[idx] = at[idx]
    prepaid = (p["plan"].to_numpy() == "prepaid")[idx]
    contract = p["contract_end"].to_numpy().copy()
    months = int(RENEWAL_MONTHS * DAYS_PER_MONTH * US_PER_DAY)
    contract[idx] = np.where(prepaid, -1, tenure[idx] + months)
    hazard = p["churn_base_hazard"].to_numpy().copy()
    hazard[idx] = churn_base_hazard(
        p["loyalty"].to_numpy()[idx],
        p["price_sensitivity"].to_numpy()[idx],
        prepaid,
        np.zeros(len(idx)),
    )
    p["tenure_start"], p["contract_end"], p["churn_base_hazard"] = tenure, contract, hazard
    return idx


def sign_up_events(
    rng: np.random.Generator,
    pop: Population,
    keys: Keys,
    joiners: np.ndarray,
    days: int,
    buf: EventBuffer,
) -> None:
    """Each joiner's sign-up at ``tenure_start`` (a shop visit, a web session or a sales call,
    as the CRM record is created) and, for account holders, a first app or web session soon
    after (unless they left or the history ended first). Runs after the lifecycle."""
    p = pop.people
    tenure = p["tenure_start"].to_numpy()[joiners]
    names = list(SIGN_UP_CHANNELS)
    share = np.array([SIGN_UP_CHANNELS[c] for c in names])
    via = np.asarray(names, dtype=object)[rng.choice(len(names), len(joiners), p=share)]
    for ch in names:
        m = via == ch
        who = joiners[m]
        buf.add(tenure[m], who, ch, SIGN_UP_EVENT[ch], **identifiers(rng, keys, who, ch))
    delay = rng.uniform(10 * 60, FIRST_SESSION_DAYS * 86_400, len(joiners)) * US_PER_SECOND
    first = tenure + delay.astype(np.int64)
    account = (keys.login_id[joiners] != None) & (first < active_end(pop, days)[joiners])  # noqa: E711
    app = account & p["has_app"].to_numpy()[joiners]
    for ch, m in (("app", app), ("web", account & ~app)):
        who = joiners[m]
        buf.add(first[m], who, ch, "session_start", **identifiers(rng, keys, who, ch))
