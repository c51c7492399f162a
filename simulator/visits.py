"""Live visits for the replay driver: who comes, on which channel, knowing which identifiers.

Visitors are people still customers at the end of the history, weighted by how much they use
each channel; a channel only presents the identifiers it would know (a web visit a cookie and
sometimes a login, an SMS reply a phone number, a store visit a loyalty card).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from features.schema import ID_COLUMNS
from simulator.clock import US_PER_DAY, to_timestamp, to_us
from simulator.events import RETAIL_PRICE, RETAIL_WEIGHT

# Where live decisions happen (share of visits); paid_media is bought reach, not a visit.
VISIT_CHANNELS = {"web": 0.45, "app": 0.25, "email": 0.12, "sms": 0.05, "call_centre": 0.06,
                  "store": 0.07}  # fmt: skip
OPEN_BASKET_SHARE = 0.1  # of web/app visits


class Visit(BaseModel):
    """A live decision opportunity: who (truth), where, what the channel knows, the context."""

    visit_id: str
    person_id: str
    at: datetime
    channel: str
    identifiers: dict[str, str | None]
    context: dict[str, Any]


def identifiers_by_person(identities: pd.DataFrame, index: pd.Index) -> dict[str, np.ndarray]:
    """Per person, what a channel would present: the CRM e-mail and phone, loyalty card,
    login, and the cookies seen with a login (flattened, sorted by owner)."""
    n = len(index)
    out: dict[str, np.ndarray] = {}
    idx = index.get_indexer(identities["true_person_id"])
    for col, crm_only in (("email", True), ("phone", True), ("loyalty_id", False),
                          ("login_id", False)):  # fmt: skip
        arr = np.full(n, None, dtype=object)
        m = identities[col].notna().to_numpy()
        if crm_only:
            m &= (identities["source"] == "crm").to_numpy()
        arr[idx[m]] = identities[col].to_numpy()[m]
        out[col] = arr
    web = identities["cookie_id"].notna().to_numpy()
    order = np.argsort(idx[web], kind="stable")
    out["cookie_owner"] = idx[web][order]
    out["cookie_id"] = identities["cookie_id"].to_numpy()[web][order]
    return out


def channel_weights(p: pd.DataFrame, ids: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per channel, each person's relative chance of being the visitor (0 if unreachable);
    ``p`` is the people table, ``ids`` what :func:`identifiers_by_person` gives."""
    alive = (p["churned_at"].to_numpy() < 0).astype(float)
    tech = p["tech_affinity"].to_numpy()
    price = p["price_sensitivity"].to_numpy()
    has = {k: np.array([v is not None for v in ids[k]]) for k in ("email", "phone", "login_id")}
    return {
        "web": alive * (0.04 + 0.22 * tech),
        "app": alive * p["has_app"].to_numpy() * has["login_id"] * (0.05 + 0.35 * tech),
        "email": alive * has["email"],
        "sms": alive * has["phone"],
        "call_centre": alive * has["phone"] * (0.006 + 0.01 * price),
        "store": alive * (0.008 + 0.012 * (1 - tech)),
    }


def draw_visits(
    people: pd.DataFrame,
    src: dict[str, np.ndarray],
    rng: np.random.Generator,
    n: int,
    start_us: int,
    span_us: int,
) -> pd.DataFrame:
    """``n`` visits uniformly in [start, start + span) among ``people`` (identifiers ``src``
    from :func:`identifiers_by_person`): DataFrame with the truth person_id."""
    weights = channel_weights(people, src)
    names = list(VISIT_CHANNELS)
    share = np.array([VISIT_CHANNELS[c] for c in names])
    channel = np.asarray(names, dtype=object)[rng.choice(len(names), n, p=share / share.sum())]
    person = np.zeros(n, dtype=np.int64)
    for ch in names:
        m = channel == ch
        w = weights[ch]
        if m.any():
            person[m] = rng.choice(len(w), int(m.sum()), p=w / w.sum())
    ids = {c: np.full(n, None, dtype=object) for c in ID_COLUMNS}
    m = channel == "web"
    owner, cookies = src["cookie_owner"], src["cookie_id"]
    first = np.searchsorted(owner, person[m], side="left")
    count = np.searchsorted(owner, person[m], side="right") - first
    pick = first + (rng.random(int(m.sum())) * np.maximum(count, 1)).astype(np.int64)
    known = (count > 0) & (rng.random(int(m.sum())) < 0.7)
    anon = np.array(
        [f"ck_new_{x:010x}" for x in rng.integers(0, 2**40, int(m.sum()))], dtype=object
    )
    ids["cookie_id"][m] = np.where(
        known, cookies[np.minimum(pick, max(len(cookies) - 1, 0))] if len(cookies) else anon, anon
    )
    logged = rng.random(int(m.sum())) < 0.5
    ids["login_id"][m] = np.where(logged, src["login_id"][person[m]], None)
    m = channel == "app"
    ids["login_id"][m] = src["login_id"][person[m]]
    m = channel == "email"
    ids["email"][m] = src["email"][person[m]]
    m = np.isin(channel, ["sms", "call_centre"])
    ids["phone"][m] = src["phone"][person[m]]
    m = channel == "store"
    ids["loyalty_id"][m] = src["loyalty_id"][person[m]]
    ids["phone"][m] = np.where(ids["loyalty_id"][m] == None, src["phone"][person[m]], None)  # noqa: E711
    basket = np.isin(channel, ["web", "app"]) & (rng.random(n) < OPEN_BASKET_SHARE)
    value = np.where(basket, RETAIL_PRICE[rng.choice(len(RETAIL_PRICE), n, p=RETAIL_WEIGHT)], 0.0)
    at = start_us + (rng.random(n) * span_us).astype(np.int64)
    order = np.argsort(at, kind="stable")
    df = pd.DataFrame(
        {
            "visit_id": [f"V{i:08d}" for i in range(n)],
            "at": to_timestamp(at[order]),
            "person_id": people["person_id"].to_numpy()[person[order]],
            "channel": channel[order],
            **{k: v[order] for k, v in ids.items()},
            "open_basket": basket[order],
            "basket_value": value[order],
        }
    )
    return df


class LiveSampling:
    """Visits and responses after the history ends, for the replay and the demo; mixed into
    :class:`simulator.truth.Truth`, which supplies the people, their identifiers, the world's
    end and conversion probabilities (this module never imports it: the arrow points one way)."""

    people: pd.DataFrame  # these five are Truth's
    _ids: dict[str, np.ndarray]
    end_us: int
    conversion_probs: Callable[..., tuple[np.ndarray, np.ndarray]]
    conversion_prob: Callable[..., float]

    def sample_visits(
        self, rng: np.random.Generator, n: int, start: Any = None, span_days: float = 30.0
    ) -> pd.DataFrame:
        """``n`` live visits in [start, start + span_days) (default start: the world's end).

        Columns: visit_id, at, person_id (truth), channel, the identifiers that channel knows
        (email, phone, loyalty_id, login_id, cookie_id; others null), open_basket,
        basket_value. People who churned during the history do not visit."""
        start_us = self.end_us if start is None else int(to_us(start))
        return draw_visits(self.people, self._ids, rng, n, start_us, int(span_days * US_PER_DAY))

    def sample_visit(self, rng: np.random.Generator, at: Any = None) -> Visit:
        row = self.sample_visits(rng, 1, start=at, span_days=0 if at is not None else 30).iloc[0]
        return Visit(
            visit_id=row.visit_id,
            person_id=row.person_id,
            at=row["at"].to_pydatetime(),
            channel=row.channel,
            identifiers={c: (None if pd.isna(row[c]) else row[c]) for c in ID_COLUMNS},
            context={
                "channel": row.channel,
                "open_basket": bool(row.open_basket),
                "basket_value": float(row.basket_value),
            },
        )

    def sample_outcomes(
        self,
        rng: np.random.Generator,
        visits: pd.DataFrame,
        offer_ids: Sequence[str] | np.ndarray,
        treated: Any = True,
    ) -> np.ndarray:
        """Draw conversions for visits shown ``offer_ids`` (treated) or not."""
        p1, p0 = self.conversion_probs(
            visits["person_id"].to_numpy(),
            to_us(visits["at"]),
            visits["channel"].to_numpy(),
            offer_ids,
            visits["open_basket"].to_numpy().astype(bool),
        )
        p = np.where(np.broadcast_to(np.asarray(treated, dtype=bool), p1.shape), p1, p0)
        return rng.random(len(p)) < p

    def sample_outcome(
        self,
        rng: np.random.Generator,
        person_id: str,
        offer_id: str,
        treated: bool,
        at: Any = None,
        channel: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> bool:
        """Draw one response; ``at`` defaults to the world's end, ``channel`` to the context's
        channel or web."""
        at = self.end_us if at is None else at
        channel = channel or (context or {}).get("channel", "web")
        p = self.conversion_prob(person_id, at, channel, offer_id, treated, context)
        return bool(rng.random() < p)
