"""Each customer's preferred channel: among the contact channels they consent to, the one with
the highest expected response, from the promoted propensity model: the best conversion
probability, if contacted, over the offers that may go out on that channel.

Written into the ``customer_segments`` view by ``nextbest segments refresh`` and computed
live for the agent view (``GET /profile/{id}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from features.events import CONSENT_CHANNELS
from serving.policy import is_no_offer

# channels Nextbest contacts a customer on (paid media reaches audiences, not one person)
CONTACT_CHANNELS = tuple(c for c in CONSENT_CHANNELS if c != "paid_media")


def _consents(row: dict[str, Any], channel: str) -> bool:
    value = row.get(f"consent_{channel}")
    return bool(value) if value is not None and value == value else False


def expected_responses(
    models: Any, offers: Sequence[Any], rows: list[dict[str, Any]]
) -> dict[str, np.ndarray]:
    """Per contact channel the model knows, each customer's best conversion probability if
    contacted there (over the offers allowed on it)."""
    known = (
        set(models.propensity.spec.categories.get("channel", [])) if models.propensity else set()
    )
    out: dict[str, np.ndarray] = {}
    for channel in CONTACT_CHANNELS:
        ids = [o.id for o in offers if channel in o.channels and not is_no_offer(o)]
        if channel not in known or not ids or not rows:
            continue
        scored = models.offer_scores_many(rows, [channel] * len(rows), [ids] * len(rows))
        out[channel] = np.array([float(np.max(treated)) for treated, _ in scored])
    return out


def preferred_channels(
    models: Any, offers: Sequence[Any], rows: list[dict[str, Any]]
) -> list[str | None]:
    """The consented contact channel with the highest expected response per row; None when the
    customer consents to none the model scores, or no propensity model is promoted."""
    if models is None or getattr(models, "propensity", None) is None:
        return [None] * len(rows)
    scores = expected_responses(models, offers, rows)
    best: list[str | None] = []
    for i, row in enumerate(rows):
        options = [(s[i], c) for c, s in scores.items() if _consents(row, c)]
        best.append(max(options)[1] if options else None)
    return best
