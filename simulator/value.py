"""True future value: what each person is expected to spend on retail purchases in the days
after the history ends, from the processes that generated the history.

Three organic purchase streams (``simulator.events``): in-session checkouts of web and app
baskets, abandoned baskets that come back by themselves (``simulator.comebacks``), and
intent purchases at ``base_purchase_rate``. Each runs while the person has not churned; a
disengaged person keeps the share of arrivals ``_arrivals`` keeps. Survival follows the daily
churn hazard of ``Truth.churn_hazards`` as the contract position moves on (no complaints are
invented for the future). Offer conversions are left out: they depend on the policy, which is
not a trait of the customer. Every purchase is worth the catalogue's mean retail price.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from simulator.clock import US_PER_DAY
from simulator.comebacks import comeback_probs
from simulator.events import BASKET_P, IN_SESSION_CHECKOUT, RETAIL_PRICE, RETAIL_WEIGHT
from simulator.truth import Truth

MEAN_PRICE = float(RETAIL_PRICE @ RETAIL_WEIGHT)
SESSION_QUIET, INTENT_QUIET = 0.4, 0.6  # kept share of arrivals once disengaged (events.py)


def daily_purchase_rates(truth: Truth, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(purchases per day while engaged, while disengaged) of each person."""
    p = truth.people
    tech = p["tech_affinity"].to_numpy()[idx]
    price = p["price_sensitivity"].to_numpy()[idx]
    has_app = p["has_app"].to_numpy()[idx].astype(float)
    sessions = (0.04 + 0.22 * tech) + has_app * (0.05 + 0.35 * tech)
    baskets = sessions * BASKET_P * (0.7 + 0.6 * price)
    comeback = np.asarray(comeback_probs(price, False), dtype=float)
    basket_buys = baskets * (IN_SESSION_CHECKOUT + (1 - IN_SESSION_CHECKOUT) * comeback)
    intent = p["base_purchase_rate"].to_numpy()[idx]
    return basket_buys + intent, basket_buys * SESSION_QUIET + intent * INTENT_QUIET


def true_future_value(
    truth: Truth, person_ids: Sequence[str] | np.ndarray, days: int = 365
) -> pd.DataFrame:
    """Expected purchases and spend of each person in the ``days`` after the history ends."""
    idx = truth.person_index(person_ids)
    ids = np.asarray(person_ids)
    engaged, quiet = daily_purchase_rates(truth, idx)
    dis = truth.people["disengaged_at"].to_numpy()[idx]
    rate = np.where((dis >= 0) & (dis <= truth.end_us), quiet, engaged)
    churned = truth.people["churned_at"].to_numpy()[idx]
    alive = np.where((churned >= 0) & (churned <= truth.end_us), 0.0, 1.0)  # hazard 0 then
    purchases = np.zeros(len(idx))
    for day in range(days):
        at = truth.end_us + day * US_PER_DAY
        purchases += alive * rate
        alive *= 1.0 - truth.churn_hazards(ids, np.full(len(idx), at, dtype=np.int64))
    return pd.DataFrame(
        {"true_purchases": purchases, "true_value": purchases * MEAN_PRICE},
        index=pd.Index(ids, name="person_id"),
    )
