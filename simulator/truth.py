"""The importable truth: exact conversion probabilities, uplift, churn hazard and reward.

Definitions (all from ``simulator.response``, the process that generated the history):
- ``conversion_prob(..., treated)``: P(the person buys the offer's product within
  ``WINDOW_DAYS`` = 30 days after ``at``) if shown the offer on ``channel`` (treated) or not.
  0 when the offer is not eligible for the person's profile at ``at`` (see the catalogue's
  rules), outside its validity dates, for ``no_offer``, or after the person churned.
- ``uplift = p_treated - p_untreated`` (can be negative: contact-averse people on intrusive
  channels).
- ``expected_reward = p_treated * (value - cost) - p_untreated * value``: the incremental margin
  of showing the offer versus showing nothing. A conversion after treatment earns the offer's
  value minus its cost (the discount); one that would have happened anyway earns the full value.
  So a discount to someone who buys anyway is negative. ``no_offer`` has reward 0.
- ``churn_hazard``: the daily probability of churning at ``at`` (contract position, recent
  complaints, disengagement), the formula the lifecycle simulation drew from.

Every method has a vectorised form (arrays in, numpy out) for replaying many visits, and
``sample_visits`` / ``sample_outcomes`` drive a live replay: visitors after the history ends,
with only the identifiers their channel would know, and responses drawn from the truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from offers.catalog import Catalog, load_catalog
from simulator.clock import US_PER_DAY, last_before, to_us
from simulator.people import PlanHistory, contract_end_at, months_between, profile_at, static_plans
from simulator.response import (
    CHANNEL_IDS,
    OFFER_IDS,
    churn_hazard,
    conversion_probs,
    features_at,
)
from simulator.visits import LiveSampling, identifiers_by_person

Ids = Sequence[str] | np.ndarray | pd.Series

if TYPE_CHECKING:
    from simulator.world import World

TIME_COLUMNS = (
    "tenure_start",
    "contract_end",
    "churned_at",
    "disengaged_at",
    "renewed_at",
    "prior_contract_end",
)


class Truth(LiveSampling):
    """Ground truth over one simulated world. Vectorised methods take arrays of equal length."""

    def __init__(
        self,
        people: pd.DataFrame,
        identities: pd.DataFrame,
        complaints: pd.DataFrame,
        meta: dict[str, Any],
        catalog: Catalog | None = None,
        plans: pd.DataFrame | None = None,
    ) -> None:
        """``plans`` is the world's plan history (PLAN_COLUMNS); without it each person's
        plan and ARPU of the people table hold throughout."""
        self.catalog = catalog or load_catalog()
        self.meta = meta
        p = people.reset_index(drop=True).copy()
        for c in TIME_COLUMNS:
            p[c] = _us_or_null(p[c])
        self.people = p
        self.index = pd.Index(p["person_id"])
        self.plans = PlanHistory.from_frame(
            static_plans(people) if plans is None else plans, self.index
        )
        self.end_us = int(to_us(pd.Timestamp(meta["end"])))
        self._c_person = complaints["person"].to_numpy()
        self._c_ts = complaints["t"].to_numpy()
        self._ids = identifiers_by_person(identities, self.index)
        self._value = np.array([self._offer_attr(o, "value") for o in OFFER_IDS])
        self._cost = np.array([self._offer_attr(o, "cost") for o in OFFER_IDS])

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def load(cls, world_dir: str | Path, catalog: Catalog | None = None) -> Truth:
        """Truth of a written world (reads people, identities and complaint events)."""
        from simulator.world import load_world_tables

        people, identities, complaints, plans, meta = load_world_tables(world_dir)
        return cls(people, identities, _complaints(complaints, people), meta, catalog, plans)

    @classmethod
    def from_world(cls, world: World, catalog: Catalog | None = None) -> Truth:
        ev = world.events
        return cls(
            world.people,
            world.identities,
            _complaints(ev[ev.event_type == "complaint"], world.people),
            world.meta,
            catalog,
            world.plans,
        )

    def _offer_attr(self, offer_id: str, attr: str) -> float:
        return (
            float(getattr(self.catalog.get(offer_id), attr))
            if offer_id in self.catalog.ids
            else 0.0
        )

    def person_index(self, person_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        idx = self.index.get_indexer(np.asarray(person_ids, dtype=object))
        if (idx < 0).any():
            bad = np.asarray(person_ids, dtype=object)[idx < 0][0]
            raise KeyError(f"unknown person_id {bad!r}")
        return idx

    # --- vectorised -----------------------------------------------------------------------
    def conversion_probs(
        self,
        person_ids: Sequence[str] | np.ndarray,
        at: Any,
        channels: Sequence[str] | np.ndarray,
        offer_ids: Sequence[str] | np.ndarray,
        open_basket: Any = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(p_treated, p_untreated) per row."""
        idx = self.person_index(person_ids)
        n = len(idx)
        at_us = np.broadcast_to(np.asarray(to_us(at), dtype=np.int64), (n,))
        offers = np.broadcast_to(np.asarray(offer_ids, dtype=object), (n,))
        chans = np.broadcast_to(np.asarray(channels, dtype=object), (n,))
        basket = np.broadcast_to(np.asarray(open_basket, dtype=bool), (n,))
        o_idx = _codes(offers, OFFER_IDS, "offer_id")
        c_idx = _codes(chans, CHANNEL_IDS, "channel")
        x, averse = features_at(self.people, idx, at_us, basket)
        p1, p0 = conversion_probs(x, averse, o_idx, c_idx)
        ok = self._possible(idx, at_us, o_idx)
        return p1 * ok, p0 * ok

    def _possible(self, idx: np.ndarray, at_us: np.ndarray, o_idx: np.ndarray) -> np.ndarray:
        """Eligible, valid and not churned: otherwise nobody can buy it."""
        churned = self.people["churned_at"].to_numpy()[idx]
        ok = (churned < 0) | (at_us < churned)
        profile = profile_at(self.people, idx, at_us, self.plans)
        for code in np.unique(o_idx):
            m = o_idx == code
            if OFFER_IDS[code] not in self.catalog.ids:
                ok[m] = False
                continue
            offer = self.catalog.get(OFFER_IDS[code])
            lo, hi = to_us(offer.valid_from), to_us(offer.valid_to)
            valid = (at_us[m] >= lo) & (at_us[m] <= hi)
            ok[m] &= offer.eligible_mask(profile[m].reset_index(drop=True)) & valid
        return ok

    def uplifts(
        self, person_ids: Ids, at: Any, channels: Ids, offer_ids: Ids, open_basket: Any = False
    ) -> np.ndarray:
        """p_treated - p_untreated per row."""
        p1, p0 = self.conversion_probs(person_ids, at, channels, offer_ids, open_basket)
        return p1 - p0

    def expected_rewards(
        self, person_ids: Ids, at: Any, channels: Ids, offer_ids: Ids, open_basket: Any = False
    ) -> np.ndarray:
        """Incremental margin of showing each offer versus nothing (see module docstring)."""
        p1, p0 = self.conversion_probs(person_ids, at, channels, offer_ids, open_basket)
        o = _codes(
            np.broadcast_to(np.asarray(offer_ids, dtype=object), p1.shape), OFFER_IDS, "offer_id"
        )
        return p1 * (self._value[o] - self._cost[o]) - p0 * self._value[o]

    def reward_matrix(
        self, visits: pd.DataFrame, offer_ids: Sequence[str] | None = None
    ) -> np.ndarray:
        """(visits x offers) rewards; ``visits`` has person_id, at, channel, open_basket."""
        offer_ids = list(offer_ids or self.catalog.ids)
        n, k = len(visits), len(offer_ids)
        rep = lambda col: np.repeat(visits[col].to_numpy(), k)  # noqa: E731
        r = self.expected_rewards(
            rep("person_id"),
            np.repeat(to_us(visits["at"]), k),
            rep("channel"),
            np.tile(np.asarray(offer_ids, dtype=object), n),
            rep("open_basket").astype(bool),
        )
        return r.reshape(n, k)

    def churn_hazards(self, person_ids: Sequence[str] | np.ndarray, at: Any) -> np.ndarray:
        """Daily churn probability at each moment (0 once churned)."""
        idx = self.person_index(person_ids)
        at_us = np.broadcast_to(np.asarray(to_us(at), dtype=np.int64), idx.shape)
        p = self.people
        ml = months_between(at_us, contract_end_at(p, idx, at_us))
        prev = last_before(self._c_person, self._c_ts, idx, at_us, inclusive=False)
        dsc = np.where(prev >= 0, (at_us - prev) / US_PER_DAY, np.nan)
        dis = p["disengaged_at"].to_numpy()[idx]
        churned = p["churned_at"].to_numpy()[idx]
        h = churn_hazard(
            p["churn_base_hazard"].to_numpy()[idx], ml, dsc, (dis >= 0) & (dis <= at_us)
        )
        return np.where((churned >= 0) & (churned <= at_us), 0.0, h)

    # --- scalar conveniences --------------------------------------------------------------
    def conversion_prob(
        self,
        person_id: str,
        at: Any,
        channel: str,
        offer_id: str,
        treated: bool,
        context: Mapping[str, Any] | None = None,
    ) -> float:
        p1, p0 = self.conversion_probs([person_id], at, [channel], [offer_id], _basket(context))
        return float(p1[0] if treated else p0[0])

    def uplift(
        self,
        person_id: str,
        at: Any,
        channel: str,
        offer_id: str,
        context: Mapping[str, Any] | None = None,
    ) -> float:
        return float(self.uplifts([person_id], at, [channel], [offer_id], _basket(context))[0])

    def expected_reward(
        self,
        person_id: str,
        at: Any,
        channel: str,
        offer_id: str,
        context: Mapping[str, Any] | None = None,
    ) -> float:
        return float(
            self.expected_rewards([person_id], at, [channel], [offer_id], _basket(context))[0]
        )

    def churn_hazard(self, person_id: str, at: Any) -> float:
        return float(self.churn_hazards([person_id], at)[0])


def _basket(context: Mapping[str, Any] | None) -> bool:
    return bool((context or {}).get("open_basket", False))


def _codes(values: np.ndarray, vocab: tuple[str, ...], name: str) -> np.ndarray:
    codes = pd.Index(vocab).get_indexer(np.asarray(values, dtype=object))
    if (codes < 0).any():
        bad = np.asarray(values, dtype=object)[codes < 0][0]
        raise ValueError(f"unknown {name} {bad!r} (known: {', '.join(vocab)})")
    return codes


def _us_or_null(col: pd.Series) -> np.ndarray:
    """Timestamps as int64 microseconds, -1 for null (the simulator's internal form)."""
    if col.dtype.kind in "iu":
        return col.to_numpy(dtype=np.int64)
    s = pd.to_datetime(col, utc=True).dt.tz_convert(None)
    out = s.to_numpy().astype("datetime64[us]").view(np.int64).copy()
    out[s.isna().to_numpy()] = -1
    return out


def _complaints(events: pd.DataFrame, people: pd.DataFrame) -> pd.DataFrame:
    idx = pd.Index(people["person_id"]).get_indexer(events["true_person_id"])
    return pd.DataFrame({"person": idx.astype(np.int64), "t": to_us(events["ts"])})
