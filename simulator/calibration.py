"""How generous the simulated world is, against what the product's users report (issue 13).

A world that is easier to learn than real ones flatters every model and every interval built
on it. Users report that non-personalised, segmented e-mail campaigns convert 0.5-2% with a
real uplift under a point (some close to zero), that calendar campaigns on other channels are
as modest, and that act-on-intent contacts (a message after an abandoned basket) lift 5-10
times more. ``calibration`` measures a world against those figures from its ground truth:
the true conversion probabilities every past campaign exposure was drawn from, and the true
comeback probabilities of its abandoned baskets.

Trigger types: ``calendar`` = the scheduled campaigns (``simulator.campaigns``); ``intent`` =
abandoned baskets, contacted within the window vs not (``simulator.comebacks``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from simulator.comebacks import basket_outcomes, comeback_probs
from simulator.response import WINDOW_DAYS

# --- what users report (the targets; each a closed range) ----------------------------------------
EMAIL_TREATED_CONVERSION = (0.005, 0.02)  # segmented e-mail campaigns convert 0.5-2%
EMAIL_MEAN_UPLIFT = (0.0, 0.01)  # ...with a real uplift under 1 point
CALENDAR_MEAN_UPLIFT = (0.0, 0.01)  # every calendar campaign together: under 1 point
CHANNEL_MEAN_UPLIFT = (-0.005, 0.015)  # each channel's calendar campaigns: as modest
NEAR_ZERO_OFFER_UPLIFT = (-0.0025, 0.0025)  # the offer closest to zero: within a quarter point
NEGATIVE_UPLIFT_SHARE = (0.03, 0.35)  # the contact-averse on intrusive channels react badly
TOP_DECILE_OVER_MEAN = (3.0, float("inf"))  # some people and offers lift well above the mean
INTENT_OVER_CALENDAR = (5.0, 10.0)  # act-on-intent lifts 5-10x more than calendar campaigns
COMEBACK_NO_CONTACT = (0.17, 0.25)  # ~21% of abandoned baskets come back with no contact


def _row(p1: np.ndarray, p0: np.ndarray, y1: np.ndarray, y0: np.ndarray) -> dict[str, Any]:
    """True untreated and treated conversion, mean true uplift, and what was observed."""
    n = len(p1)

    def mean(v: np.ndarray) -> float | None:
        return round(float(np.mean(v)), 5) if len(v) else None

    return {
        "untreated_conversion": mean(p0),
        "treated_conversion": mean(p1),
        "mean_true_uplift": mean(p1 - p0),
        "observed_untreated": mean(y0),
        "observed_treated": mean(y1),
        "n": n,
    }


def _table(ex: pd.DataFrame, by: str) -> dict[str, dict[str, Any]]:
    out = {}
    for key, g in ex.groupby(by, sort=True):
        held = (g["arm"] == "holdout").to_numpy()
        y = g["converted"].to_numpy()
        out[str(key)] = _row(
            g["true_p_treated"].to_numpy(), g["true_p_untreated"].to_numpy(), y[~held], y[held]
        )
    return out


def _intent(world: Any) -> tuple[dict[str, Any], float | None]:
    """Abandoned baskets: the true comeback chance without and with a contact, over every
    abandoned basket; observed comebacks of the contacted and of the rest."""
    b = basket_outcomes(world.events, WINDOW_DAYS)
    b = b[b["abandoned"]]
    price = world.people.set_index("person_id")["price_sensitivity"]
    price = price.reindex(b["true_person_id"]).to_numpy()
    contacted, back = b["contacted"].to_numpy(), b["back"].to_numpy()
    row = _row(
        comeback_probs(price, True), comeback_probs(price, False), back[contacted], back[~contacted]
    )
    quiet = back[~contacted]
    return row, float(quiet.mean()) if len(quiet) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _check(value: float | None, bounds: tuple[float, float]) -> dict[str, Any]:
    """The measured figure against its target range; a figure the world cannot give fails."""
    ok = value is not None and not np.isnan(value) and bounds[0] <= value <= bounds[1]
    hi = None if np.isinf(bounds[1]) else bounds[1]
    return {"value": None if value is None else round(float(value), 5), "target": [bounds[0], hi],
            "pass": bool(ok)}  # fmt: skip


def calibration(world: Any) -> dict[str, Any]:
    """The calibration table of a world (by offer, channel and trigger type; the comeback
    rate) and each target with its measured value and a pass flag."""
    ex = world.exposures
    uplift = (ex["true_p_treated"] - ex["true_p_untreated"]).to_numpy()
    calendar = _row(
        ex["true_p_treated"].to_numpy(),
        ex["true_p_untreated"].to_numpy(),
        ex.loc[ex["arm"] != "holdout", "converted"].to_numpy(),
        ex.loc[ex["arm"] == "holdout", "converted"].to_numpy(),
    )
    intent, comeback = _intent(world)
    by_offer, by_channel = _table(ex, "offer_id"), _table(ex, "channel")
    email = by_channel.get("email", {})
    mean = calendar["mean_true_uplift"]
    top = np.sort(uplift)[-max(len(uplift) // 10, 1) :].mean() if len(uplift) else None
    offers = [r["mean_true_uplift"] for r in by_offer.values()]
    channels = [r["mean_true_uplift"] for r in by_channel.values()]
    targets = {
        "email_treated_conversion": _check(
            email.get("treated_conversion"), EMAIL_TREATED_CONVERSION
        ),
        "email_mean_uplift": _check(email.get("mean_true_uplift"), EMAIL_MEAN_UPLIFT),
        "calendar_mean_uplift": _check(mean, CALENDAR_MEAN_UPLIFT),
        "channel_mean_uplift_max": _check(max(channels, default=None), CHANNEL_MEAN_UPLIFT),
        "channel_mean_uplift_min": _check(min(channels, default=None), CHANNEL_MEAN_UPLIFT),
        "offer_uplift_closest_to_zero": _check(
            min(offers, key=abs, default=None), NEAR_ZERO_OFFER_UPLIFT
        ),
        "negative_uplift_share": _check(
            float((uplift < 0).mean()) if len(uplift) else None, NEGATIVE_UPLIFT_SHARE
        ),
        "top_decile_over_mean": _check(_ratio(top, mean), TOP_DECILE_OVER_MEAN),
        "intent_over_calendar": _check(
            _ratio(intent["mean_true_uplift"], mean), INTENT_OVER_CALENDAR
        ),
        "comeback_no_contact": _check(comeback, COMEBACK_NO_CONTACT),
    }
    return {
        "by_offer": by_offer,
        "by_channel": by_channel,
        "by_trigger": {"calendar": calendar, "intent": intent},
        "comeback_rate": None if comeback is None else round(comeback, 5),
        "targets": targets,
        "pass": all(t["pass"] for t in targets.values()),
    }
