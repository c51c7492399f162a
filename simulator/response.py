"""The world's causal model: offer response and churn hazard, as vectorised numpy formulas.

Used both to generate history (campaigns, lifecycle) and by the truth API, so the truth is the
data-generating process itself, not an estimate of it.

Offer response: P(buy the offer's product within ``WINDOW_DAYS`` of the moment) is
``sigmoid(base)`` untreated and ``sigmoid(base + tau)`` treated. ``tau`` varies by person,
offer and channel and is negative for contact-averse people on intrusive channels.

The coefficients are calibrated to what users report of real campaigns (``simulator.calibration``
holds the targets): a segmented e-mail converts 0.5-2% with a true uplift under a point, calendar
campaigns on every channel average well under a point (one offer about zero), while a few people
and offers lift several times the mean. The world of before issue 13 was ~10x more generous
(a 5.8-point mean uplift) and flattered every model learnt on it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.people import contract_end_at, months_between

WINDOW_DAYS = 30  # the attribution window every conversion probability refers to

OFFER_IDS = (
    "device_upgrade",
    "data_addon",
    "retention_discount",
    "streaming_bundle",
    "family_plan",
    "prepaid_to_postpaid",
    "loyalty_reward",
    "no_offer",
)
CHANNEL_IDS = ("web", "app", "email", "sms", "call_centre", "store", "paid_media")
# Features the formulas read, in this order (built by ``response_features``).
FEATURES = (
    "one",
    "price",
    "tech",
    "data",
    "stream",
    "family",
    "loyalty",
    "near_end",
    "out_of_contract",
    "tenure_years",
    "basket",
)
# Logit coefficients per offer: base (untreated propensity) and tau (treatment effect). Untreated
# 30-day conversion is ~1% (retention discount ~4%); tau is ~0.3 on average, so uplift ~0.6 pt.
_BASE = {
    "device_upgrade": {"one": -6.0, "tech": 2.0, "data": 0.6, "near_end": 1.2, "basket": 1.0},
    "data_addon": {"one": -6.2, "data": 3.6},
    "retention_discount": {"one": -5.0, "loyalty": 2.6, "out_of_contract": 0.6},
    "streaming_bundle": {"one": -6.4, "stream": 3.2, "basket": 0.3},
    "family_plan": {"one": -6.6, "family": 0.55},
    "prepaid_to_postpaid": {"one": -6.0, "data": 2.0, "tenure_years": 0.15, "price": -0.8},
    "loyalty_reward": {"one": -4.8, "loyalty": 1.2},
}
_TAU = {
    "device_upgrade": {"one": 0.1, "tech": 0.6, "price": 0.3, "basket": 0.4},
    "data_addon": {"one": 0.6, "data": -0.5, "tech": 0.2},
    "retention_discount": {"one": 0.0, "price": 1.0, "loyalty": -0.8},
    "streaming_bundle": {"one": 0.0, "stream": 0.9, "price": -0.3},
    "family_plan": {"one": -0.3, "family": 0.12},
    "prepaid_to_postpaid": {"one": 0.3, "data": 0.6, "price": -0.6},
    "loyalty_reward": {"one": 0.4, "loyalty": 0.3},
}
CHANNEL_LIFT = {
    "web": -0.1,
    "app": 0.05,
    "email": 0.0,
    "sms": 0.05,
    "call_centre": 0.3,
    "store": 0.2,
    "paid_media": -0.3,
}
# How much each channel intrudes; tau loses AVERSION_WEIGHT * contact_aversion * intrusion.
INTRUSION = {
    "web": 0.05,
    "app": 0.15,
    "email": 0.45,
    "sms": 0.8,
    "call_centre": 1.0,
    "store": 0.2,
    "paid_media": 0.1,
}
AVERSION_WEIGHT = 1.0


def _matrix(table: dict[str, dict[str, float]]) -> np.ndarray:
    """Coefficient table as an (offers x features) array; no_offer is all zeros."""
    m = np.zeros((len(OFFER_IDS), len(FEATURES)))
    for o, coefs in table.items():
        for f, c in coefs.items():
            m[OFFER_IDS.index(o), FEATURES.index(f)] = c
    return m


BASE_COEF = _matrix(_BASE)
TAU_COEF = _matrix(_TAU)
CHANNEL_LIFT_ARR = np.array([CHANNEL_LIFT[c] for c in CHANNEL_IDS])
INTRUSION_ARR = np.array([INTRUSION[c] for c in CHANNEL_IDS])
NO_OFFER_IDX = OFFER_IDS.index("no_offer")


def response_features(
    traits: dict[str, np.ndarray],
    months_left: np.ndarray,
    tenure_months: np.ndarray,
    open_basket: np.ndarray,
) -> np.ndarray:
    """The (rows x FEATURES) design matrix for rows of (person at a moment, context)."""
    ml = np.asarray(months_left, dtype=float)
    x = np.empty((len(ml), len(FEATURES)))
    cols = {
        "one": np.ones(len(ml)),
        "price": traits["price_sensitivity"],
        "tech": traits["tech_affinity"],
        "data": traits["data_hunger"],
        "stream": traits["streaming_affinity"],
        "family": traits["family_size"].astype(float),
        "loyalty": traits["loyalty"],
        "near_end": np.nan_to_num(ml <= 3, nan=0.0).astype(float),
        "out_of_contract": np.nan_to_num(ml < 0, nan=0.0).astype(float),
        "tenure_years": np.asarray(tenure_months, dtype=float) / 12.0,
        "basket": np.asarray(open_basket, dtype=float),
    }
    for j, f in enumerate(FEATURES):
        x[:, j] = cols[f]
    return x


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def conversion_probs(
    x: np.ndarray,
    aversion: np.ndarray,
    offer_idx: np.ndarray,
    channel_idx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(p_treated, p_untreated) per row; rows of ``no_offer`` get 0 for both."""
    base = np.einsum("ij,ij->i", x, BASE_COEF[offer_idx])
    on_site = np.isin(channel_idx, (CHANNEL_IDS.index("web"), CHANNEL_IDS.index("app")))
    tau = (
        np.einsum("ij,ij->i", x, TAU_COEF[offer_idx])
        + CHANNEL_LIFT_ARR[channel_idx]
        - AVERSION_WEIGHT * aversion * INTRUSION_ARR[channel_idx]
        + 0.3 * on_site * x[:, FEATURES.index("basket")]
    )
    real = offer_idx != NO_OFFER_IDX
    return _sigmoid(base + tau) * real, _sigmoid(base) * real


# --- churn ------------------------------------------------------------------------------------
DISENGAGED_MULT = 15.0  # churn hazard once usage has dropped
ONSET_MULT = 2.5  # hazard of disengaging, relative to the base churn hazard
COMPLAINT_BOOST = 3.0
COMPLAINT_DECAY_DAYS = 20.0


def contract_multiplier(months_left: np.ndarray) -> np.ndarray:
    """Locked in: low; around contract end: high; out of contract (rolling): raised; prepaid: 1."""
    ml = np.asarray(months_left, dtype=float)
    out = np.ones(len(ml))
    out[ml > 1] = 0.5
    out[(ml >= -1) & (ml <= 1)] = 3.0
    out[ml < -1] = 2.0
    return out


def complaint_multiplier(days_since_complaint: np.ndarray) -> np.ndarray:
    """1 without complaints; up to 1 + COMPLAINT_BOOST right after one, decaying."""
    d = np.asarray(days_since_complaint, dtype=float)
    return 1.0 + COMPLAINT_BOOST * np.where(np.isnan(d), 0.0, np.exp(-d / COMPLAINT_DECAY_DAYS))


def churn_hazard(
    base: np.ndarray,
    months_left: np.ndarray,
    days_since_complaint: np.ndarray,
    disengaged: np.ndarray,
) -> np.ndarray:
    """Daily probability of churning."""
    h = base * contract_multiplier(months_left) * complaint_multiplier(days_since_complaint)
    return np.minimum(h * np.where(disengaged, DISENGAGED_MULT, 1.0), 1.0)


def onset_hazard(
    base: np.ndarray, months_left: np.ndarray, days_since_complaint: np.ndarray
) -> np.ndarray:
    """Daily probability of starting to disengage (usage drops, then churn hazard jumps)."""
    m = contract_multiplier(months_left) * complaint_multiplier(days_since_complaint)
    return np.minimum(ONSET_MULT * base * m, 1.0)


TRAITS = (
    "price_sensitivity",
    "tech_affinity",
    "data_hunger",
    "streaming_affinity",
    "family_size",
    "loyalty",
)


def features_at(
    people: pd.DataFrame, idx: np.ndarray, at_us: np.ndarray, open_basket: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(design matrix, contact_aversion) for people ``idx`` at moments ``at_us``."""
    at = np.broadcast_to(np.asarray(at_us, dtype=np.int64), idx.shape)
    traits = {t: people[t].to_numpy()[idx] for t in TRAITS}
    ml = months_between(at, contract_end_at(people, idx, at))
    tenure = months_between(people["tenure_start"].to_numpy()[idx], at)
    x = response_features(traits, ml, tenure, np.broadcast_to(open_basket, idx.shape))
    return x, people["contact_aversion"].to_numpy()[idx]
