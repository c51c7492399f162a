"""Decision policy as plain functions: which offers may be shown, what each is worth, and the
exact probability with which the one shown was chosen.

Filters return the reason an offer was dropped, so a decision can explain itself; the final
probabilities are computed over the allowed set, so the ledger's propensity is the true one
(what off-policy evaluation and the bandit need), not the model's raw score.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from offers.catalog import NO_OFFER, Offer
from offers.rules import DERIVED_FIELDS

OUTBOUND = ("email", "sms", "paid_media")  # contact the person: explicit consent required


def profile_fields(features: Mapping[str, Any]) -> dict[str, Any]:
    """The catalogue's derived rule fields (``offers.rules.DERIVED_FIELDS``) from the
    feature store's names (the catalogue speaks in months, the profile view in days); fields
    already present are kept."""
    out = dict(features)
    for name, (source, divisor) in DERIVED_FIELDS.items():
        if out.get(name) is None and out.get(source) is not None:
            out[name] = float(out[source]) / divisor
    return out


def is_no_offer(offer: Offer) -> bool:
    return offer.id == NO_OFFER


def valid_now(offer: Offer, now: datetime) -> str | None:
    if now < offer.valid_from:
        return "not yet valid"
    if now > offer.valid_to:
        return "expired"
    return None


def channel_allowed(offer: Offer, channel: str) -> str | None:
    return None if channel in offer.channels else f"not offered on {channel}"


def consent_ok(offer: Offer, channel: str, features: Mapping[str, Any]) -> str | None:
    """Marketing through an outbound channel needs an explicit yes; in-session channels
    (web, app, call centre, store) only the absence of a no. Service messages need neither."""
    if offer.purpose != "marketing":
        return None
    value = features.get(f"consent_{channel}")
    if channel in OUTBOUND and value is not True and value != 1:
        return f"no marketing consent for {channel}"
    if value is False or value == 0:
        return f"marketing consent withdrawn for {channel}"
    return None


def eligible(offer: Offer, profile: Mapping[str, Any]) -> str | None:
    """The catalogue's rules; a missing profile field fails its rule (the safe side)."""
    for rule in offer.eligibility:
        if not rule.matches(profile):
            return f"rule {rule.field} {rule.op} {rule.value!r} fails"
    return None


def caps_ok(
    offer: Offer,
    channel: str,
    *,
    per_channel: Counter[str],
    shows: list[tuple[str, datetime]],
    last_response: datetime | None,
    now: datetime,
    channel_caps: Mapping[str, int],
) -> str | None:
    """Channel contact caps (e.g. 2 e-mails a week), the offer's own cap per period, and
    suppression of an offer shown ``suppress_after_ignored`` times since the last response."""
    if is_no_offer(offer):
        return None
    cap = channel_caps.get(channel)
    if cap is not None and per_channel[channel] >= cap:
        return f"{channel} contact cap {cap} reached"
    caps = offer.caps
    since = now - timedelta(days=caps.period_days)
    if sum(1 for o, t in shows if o == offer.id and t >= since) >= caps.max_shows:
        return f"offer cap {caps.max_shows} per {caps.period_days} days reached"
    ignored = sum(
        1 for o, t in shows if o == offer.id and (last_response is None or t > last_response)
    )
    if ignored >= caps.suppress_after_ignored:
        return f"suppressed: shown {ignored} times without response"
    return None


def incremental_value(
    offer: Offer,
    p_treated: float,
    p_untreated: float,
    churn_risk: float,
    lever: float,
    clv: float | None = None,
) -> float:
    """Expected incremental value of showing the offer: uplift x value - expected cost.
    The cost (discount, subsidy) is paid on every treated conversion, including those that
    would have happened anyway; ``lever`` > 0 weighs a retention offer up with churn risk
    times what the customer is worth: their ``clv`` (``clv_12m`` of ``profile_v2``) when
    known, else the offer's own value as one flat figure for everybody."""
    worth = offer.value if clv is None or not math.isfinite(clv) else max(clv, 0.0)
    value = offer.value + lever * churn_risk * worth
    return (p_treated - p_untreated) * value - p_treated * offer.cost


def epsilon_greedy(scores: Mapping[str, float], epsilon: float) -> dict[str, float]:
    """Final probabilities: the best offer gets 1 - epsilon, every allowed offer an equal
    share of epsilon. Ties split the greedy mass, so the probabilities stay exact."""
    if not scores:
        return {}
    best = max(scores.values())
    top = [k for k, v in scores.items() if math.isclose(v, best, rel_tol=0, abs_tol=1e-12)]
    k = len(scores)
    return {o: epsilon / k + ((1.0 - epsilon) / len(top) if o in top else 0.0) for o in scores}


def normalise(probabilities: Mapping[str, float], allowed: Sequence[str]) -> dict[str, float]:
    """Restrict a policy's probabilities to the allowed set and renormalise, so the logged
    propensity is the probability the shown offer really had."""
    kept = {o: max(0.0, float(probabilities.get(o, 0.0))) for o in allowed}
    total = sum(kept.values())
    if total <= 0:
        return {o: 1.0 / len(allowed) for o in allowed} if allowed else {}
    return {o: p / total for o, p in kept.items()}


def sample(probabilities: Mapping[str, float], rng: random.Random) -> str:
    """Draw one offer; the last one absorbs rounding so something is always drawn."""
    u, acc = rng.random(), 0.0
    items = list(probabilities.items())
    for o, p in items:
        acc += p
        if u < acc:
            return o
    return items[-1][0]


def _rest_order(scores: Mapping[str, float]) -> list[str]:
    """Every offer by score, best first (ties keep the allowed set's order): the extra slots
    follow this order with the drawn offer taken out."""
    return sorted(scores, key=lambda o: -scores[o])


def rank(chosen: str, scores: Mapping[str, float], max_offers: int) -> list[str]:
    """The drawn offer first, then the others by score (the extra slots of a multi-offer
    channel such as a web page)."""
    return [chosen, *(o for o in _rest_order(scores) if o != chosen)][:max_offers]


def slot_probabilities(
    chosen: str, probabilities: Mapping[str, float], scores: Mapping[str, float], max_offers: int
) -> list[tuple[str, float]]:
    """The shown offers in order, each with its exact probability of being shown at that
    position under ``rank`` (the drawn offer first, the rest by score). An offer ``o`` at
    index ``j`` of the score order lands at position ``j + 1`` when the drawn offer ranks below
    it and at ``j`` when above, so its chance there is the drawn mass below or above it; at
    position 0 it is the offer's own draw probability (the propensity)."""
    order = _rest_order(scores)
    index = {o: j for j, o in enumerate(order)}
    above = [0.0]  # above[j]: the draw probability of the offers ranked before index j
    for o in order:
        above.append(above[-1] + probabilities.get(o, 0.0))
    total = above[-1]
    slots = []
    for position, o in enumerate(rank(chosen, scores, max_offers)):
        j = index[o]
        if position == 0:
            p = probabilities.get(o, 0.0)
        elif position == j + 1:
            p = total - above[j + 1]  # the drawn offer ranks below o
        else:
            p = above[j]  # the drawn offer ranks above o
        slots.append((o, p))
    return slots
