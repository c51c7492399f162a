"""A journey's goal without the journey: each entrant's untreated goal probability and when the
goal would happen, the other events that may end a dialog, and the profile fields and scores a
split may test, all from the world's own data-generating rates.

The untreated goal probability is what ``simulator.dialog``'s logit shifts act on, and what a
journey's holdout converts at. Where each comes from:
- purchase of the entry product (the abandoned basket): ``simulator.comebacks`` (COMEBACK_P,
  scaled by price sensitivity, timed by COMEBACK_MEAN_DAYS) together with ordinary purchases
  of the same product (``simulator.events``' rates), so the holdout comes back at the world's
  ~21% within 30 days;
- purchase of anything: ``simulator.events``' organic purchase rate (planned purchases plus
  baskets checked out in the session);
- purchase of an offer's product: ``simulator.response``'s untreated conversion probability
  (30 days, as a constant hazard over other windows), 0 where the offer is not eligible;
- contract renewal: ``simulator.lifecycle``'s renewal hazard (postpaid, from a month before the
  contract ends to six months after, not once disengaged), with a floor RENEWAL_FLOOR for
  postpaid customers who would not renew by themselves, so a save call has something to move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from journeys.definition import ExitRule, Journey, ScoreRule
from offers.catalog import Catalog
from offers.rules import Rule
from simulator.clock import DAYS_PER_MONTH, US_PER_DAY, person_time_key, to_us
from simulator.comebacks import COMEBACK_MEAN_DAYS, COMEBACK_P
from simulator.events import BASKET_P, IN_SESSION_CHECKOUT, RETAIL_IDS, RETAIL_WEIGHT
from simulator.lifecycle import complaint_rate
from simulator.people import PlanHistory, contract_end_at, profile_at
from simulator.response import CHANNEL_IDS, OFFER_IDS, WINDOW_DAYS, conversion_probs, features_at
from simulator.truth import Truth

CHURN_RISK_HORIZON_DAYS = 90  # churn_risk = P(churn within 90 days) at today's hazard
RENEWAL_RATE = (0.012, 0.5)  # simulator.lifecycle: 0.012 * (0.5 + loyalty) per day
RENEWAL_OPENS_MONTHS = 1.0  # renewals happen from a month before the contract ends...
RENEWAL_CLOSES_MONTHS = 6.0  # ...to six months after
RENEWAL_FLOOR = 0.01  # postpaid customers who would not renew by themselves, within the window
# Session rates per day (simulator.events.simulate_activity): web 0.04 + 0.22 * tech, app
# (app users) 0.05 + 0.35 * tech; a session adds to basket with BASKET_P * (0.7 + 0.6 * price)
# and checks out in the session with IN_SESSION_CHECKOUT.
WEB_SESSIONS = (0.04, 0.22)
APP_SESSIONS = (0.05, 0.35)
STORE_VISITS = (0.02, -0.012)  # 0.008 + 0.012 * (1 - tech)
FIELDS = (
    "plan", "arpu", "tenure_days", "tenure_months", "months_left", "months_left_on_contract",
    "consent_email", "consent_sms", "consent_app", "consent_call_centre", "purchases_7d",
    "purchases_30d", "purchases_90d", "complaints_90d", "visits_web_30d", "visits_app_30d",
    "visits_store_30d", "visits_call_centre_30d", "emails_sent_90d", "sms_sent_90d",
)  # fmt: skip
_COUNTED = {  # profile field -> (event type, channel or None, days)
    "purchases_7d": ("purchase", None, 7),
    "purchases_30d": ("purchase", None, 30),
    "purchases_90d": ("purchase", None, 90),
    "complaints_90d": ("complaint", None, 90),
    "visits_web_30d": ("session_start", "web", 30),
    "visits_app_30d": ("session_start", "app", 30),
    "visits_store_30d": ("store_visit", None, 30),
    "visits_call_centre_30d": ("call_contact", None, 30),
    "emails_sent_90d": ("email_send", None, 90),
    "sms_sent_90d": ("sms_send", None, 90),
}
OTHER_EVENTS = ("purchase", "checkout", "store_visit", "session_start", "complaint", "churn")


class Unsupported(ValueError):
    """A journey asks for something the simulator has no model of."""


@dataclass
class _Stream:
    """One kind of event per person, sorted by (person, time), for counts and last values."""

    key: np.ndarray
    value: np.ndarray

    @classmethod
    def of(cls, person: np.ndarray, ts: np.ndarray, value: np.ndarray | None = None) -> _Stream:
        key = person_time_key(person, ts)
        order = np.argsort(key, kind="stable")
        v = np.ones(len(key)) if value is None else np.asarray(value)
        return cls(key[order], v[order])

    def count(self, person: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Events of each person in (start, end]."""
        hi = np.searchsorted(self.key, person_time_key(person, end), side="right")
        lo = np.searchsorted(self.key, person_time_key(person, start), side="right")
        return hi - lo

    def last(self, person: np.ndarray, at: np.ndarray, default: Any) -> np.ndarray:
        """The value of each person's last event at or before ``at``."""
        pos = np.searchsorted(self.key, person_time_key(person, at), side="right") - 1
        safe = np.maximum(pos, 0)
        hit = (pos >= 0) & (self.key[safe] // 10**10 == np.asarray(person))
        return np.where(hit, self.value[safe] if len(self.value) else default, default)


@dataclass
class WorldView:
    """What journeys need of a world, as arrays indexed by person."""

    people: pd.DataFrame  # timestamps as int64 us, -1 = null (the simulator's form)
    index: pd.Index
    plans: PlanHistory
    truth: Truth
    events: pd.DataFrame  # ts (us), person (int), event_type, channel, product_id
    catalog: Catalog
    _streams: dict[tuple, _Stream] = field(default_factory=dict)

    @classmethod
    def of(cls, world: Any, catalog: Catalog | None = None) -> WorldView:
        truth = Truth.from_world(world, catalog)
        people = truth.people
        ev = world.events
        events = pd.DataFrame(
            {
                "ts": np.asarray(to_us(ev["ts"]), dtype=np.int64),
                "person": truth.index.get_indexer(ev["true_person_id"]).astype(np.int64),
                "event_type": ev["event_type"].to_numpy(),
                "channel": ev["channel"].to_numpy(),
                "product_id": ev["product_id"].to_numpy(),
                "consent_channel": ev["consent_channel"].to_numpy(),
                "consent_value": ev["consent_value"].to_numpy(),
            }
        )
        return cls(people, truth.index, truth.plans, truth, events, truth.catalog)

    def col(self, name: str, idx: np.ndarray) -> np.ndarray:
        return self.people[name].to_numpy()[idx]

    def stream(self, event_type: str, channel: str | None = None) -> _Stream:
        k = (event_type, channel)
        if k not in self._streams:
            ev = self.events
            m = (ev["event_type"] == event_type).to_numpy()
            if channel is not None:
                m &= (ev["channel"] == channel).to_numpy()
            self._streams[k] = _Stream.of(ev["person"].to_numpy()[m], ev["ts"].to_numpy()[m])
        return self._streams[k]

    # --- consent ------------------------------------------------------------------------
    def consent(self, channel: str, idx: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Marketing consent at each moment: e-mail and SMS from the world's consent events
        (no record: no consent, as ``simulator.consent`` has it); other channels need none."""
        if channel not in ("email", "sms"):
            return np.ones(len(idx), dtype=bool)
        k = ("consent", channel)
        if k not in self._streams:
            ev = self.events
            m = (
                (ev["event_type"] == "consent_change") & (ev["consent_channel"] == channel)
            ).to_numpy()
            self._streams[k] = _Stream.of(
                ev["person"].to_numpy()[m],
                ev["ts"].to_numpy()[m],
                ev["consent_value"].to_numpy()[m].astype(bool),
            )
        return self._streams[k].last(idx, at, False).astype(bool)

    # --- rates ----------------------------------------------------------------------------
    def purchase_rate(self, idx: np.ndarray) -> np.ndarray:
        """Organic purchases of anything per day (simulator.events' planned purchases plus
        baskets checked out in the session)."""
        tech, price = self.col("tech_affinity", idx), self.col("price_sensitivity", idx)
        sessions = (
            WEB_SESSIONS[0]
            + WEB_SESSIONS[1] * tech
            + self.col("has_app", idx) * (APP_SESSIONS[0] + APP_SESSIONS[1] * tech)
        )
        in_session = sessions * BASKET_P * (0.7 + 0.6 * price) * IN_SESSION_CHECKOUT
        return self.col("base_purchase_rate", idx) + in_session

    def event_rate(self, event: str, idx: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Per-day rate of an event the customer does anyway (an exit or a wait_for)."""
        tech = self.col("tech_affinity", idx)
        if event in ("purchase", "checkout"):
            return self.purchase_rate(idx)
        if event == "store_visit":
            return STORE_VISITS[0] + STORE_VISITS[1] * tech
        if event == "session_start":
            return (WEB_SESSIONS[0] + WEB_SESSIONS[1] * tech) + self.col("has_app", idx) * (
                APP_SESSIONS[0] + APP_SESSIONS[1] * tech
            )
        if event == "complaint":
            return complaint_rate(self.col("price_sensitivity", idx), self.col("loyalty", idx))
        if event == "churn":
            return self.truth.churn_hazards(self.index[idx], at)
        raise Unsupported(
            f"event {event!r}: the simulator has no rate for it (known: {', '.join(OTHER_EVENTS)})"
        )

    def churn_risk(self, idx: np.ndarray, at: np.ndarray) -> np.ndarray:
        """The stand-in for the churn model's score: P(churn within CHURN_RISK_HORIZON_DAYS)
        at the true daily hazard (``Truth.churn_hazards``)."""
        h = self.truth.churn_hazards(self.index.to_numpy()[idx], np.asarray(at, dtype=np.int64))
        return 1.0 - (1.0 - h) ** CHURN_RISK_HORIZON_DAYS

    # --- profile --------------------------------------------------------------------------
    def profile(self, idx: np.ndarray, at: np.ndarray, fields: set[str]) -> pd.DataFrame:
        """The named profile fields at each moment (only those in FIELDS)."""
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise Unsupported(
                f"profile field {unknown[0]!r}: not simulated (known: {', '.join(FIELDS)})"
            )
        at = np.asarray(at, dtype=np.int64)
        base = profile_at(self.people, idx, at, self.plans)
        out: dict[str, Any] = {}
        for f in fields:
            if f in ("plan", "arpu", "tenure_months", "months_left"):
                out[f] = base[f].to_numpy()
            elif f == "months_left_on_contract":
                out[f] = base["months_left"].to_numpy()
            elif f == "tenure_days":
                out[f] = base["tenure_months"].to_numpy() * DAYS_PER_MONTH
            elif f.startswith("consent_"):
                ch = f.removeprefix("consent_")
                out[f] = self.col("has_app", idx) if ch == "app" else self.consent(ch, idx, at)
            else:
                etype, ch, days = _COUNTED[f]
                out[f] = self.stream(etype, ch).count(idx, at - days * US_PER_DAY, at)
        return pd.DataFrame(out)


def condition_mask(
    view: WorldView, conds: list[Any], idx: np.ndarray, at: np.ndarray
) -> np.ndarray:
    """Whether all of a split branch's conditions hold for each instance."""
    ok = np.ones(len(idx), dtype=bool)
    fields = {c.field for c in conds if isinstance(c, Rule)}
    profile = view.profile(idx, at, fields) if fields else None
    for c in conds:
        if isinstance(c, ScoreRule):
            score = pd.DataFrame({"churn_risk": view.churn_risk(idx, at)})
            ok &= Rule.model_construct(field="churn_risk", op=c.op, value=c.value).mask(score)
        else:
            ok &= c.mask(profile)
    return ok


# --- the untreated goal -------------------------------------------------------------------
@dataclass
class Baseline:
    """Per entrant: P(goal within the window, untreated); the share of it that is a basket
    comeback (timed like ``simulator.comebacks``), the rest uniform over [lo, hi)."""

    p: np.ndarray
    fast: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def draw_times(self, rng: np.random.Generator, t0: np.ndarray) -> np.ndarray:
        """When the untreated goal would happen, given it happens in the window."""
        n = len(self.p)
        mean = COMEBACK_MEAN_DAYS * US_PER_DAY
        span = (self.hi - self.lo).astype(float)
        trunc = 1 - np.exp(-np.minimum(span, WINDOW_DAYS * US_PER_DAY) / mean)
        fast = t0 + (-mean * np.log(1 - rng.random(n) * trunc)).astype(np.int64)
        slow = self.lo + (rng.random(n) * span).astype(np.int64)
        return np.where(rng.random(n) < self.fast, fast, slow)


def baseline(
    view: WorldView, journey: Journey, idx: np.ndarray, t0: np.ndarray, product: np.ndarray
) -> Baseline:
    """The untreated goal of each entrant (see the module docstring for the sources)."""
    goal = journey.goal
    n = len(idx)
    w_us = int(goal.within.total_seconds() * 1e6)
    w_days = w_us / US_PER_DAY
    lo, hi = t0.copy(), t0 + w_us
    fast = np.zeros(n)
    alive = _alive(view, idx, t0)
    if goal.event == "purchase" and goal.product == "entry":
        if journey.entry.type != "intent" or pd.isna(product).any():
            raise Unsupported("goal.product: 'entry' needs an entry event with a product")
        price = view.col("price_sensitivity", idx)
        within = (1 - np.exp(-min(w_days, WINDOW_DAYS) / COMEBACK_MEAN_DAYS)) / (
            1 - np.exp(-WINDOW_DAYS / COMEBACK_MEAN_DAYS)
        )
        comeback = COMEBACK_P * (0.7 + 0.6 * (1 - price)) * within
        k = pd.Index(RETAIL_IDS).get_indexer(product)
        weight = np.where(k >= 0, RETAIL_WEIGHT[np.maximum(k, 0)], 0.0)
        organic = 1 - np.exp(-view.purchase_rate(idx) * weight * w_days)
        p = 1 - (1 - comeback) * (1 - organic)
        fast = comeback / np.maximum(p, 1e-12)
    elif goal.event == "purchase" and goal.product == "any":
        p = 1 - np.exp(-view.purchase_rate(idx) * w_days)
    elif goal.event == "purchase":
        offer = goal.product
        if offer not in OFFER_IDS or offer not in view.catalog.ids:
            raise Unsupported(f"goal.product: {offer!r} is no offer the simulator knows")
        x, averse = features_at(view.people, idx, t0, np.zeros(n, dtype=bool))
        o = np.full(n, OFFER_IDS.index(offer))
        _, p30 = conversion_probs(x, averse, o, np.full(n, CHANNEL_IDS.index("web")))
        ok = view.catalog.get(offer).eligible_mask(profile_at(view.people, idx, t0, view.plans))
        p = (1 - (1 - p30) ** (w_days / WINDOW_DAYS)) * ok
    elif goal.event == "contract_renewal":
        p, lo, hi = _renewal(view, idx, t0, w_us)
    else:
        raise Unsupported(
            f"goal.event: {goal.event!r} has no untreated model in the simulator "
            "(known: purchase, contract_renewal)"
        )
    return Baseline(np.where(alive, p, 0.0), fast, lo, np.maximum(hi, lo + 1))


def _alive(view: WorldView, idx: np.ndarray, t0: np.ndarray) -> np.ndarray:
    churned = view.col("churned_at", idx)
    return (churned < 0) | (churned > t0)


def _renewal(
    view: WorldView, idx: np.ndarray, t0: np.ndarray, w_us: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(renew within the window) under simulator.lifecycle's hazard, and its time span."""
    p = view.people
    end = contract_end_at(p, idx, t0)
    month = DAYS_PER_MONTH * US_PER_DAY
    opens = end - int(RENEWAL_OPENS_MONTHS * month)
    closes = end + int(RENEWAL_CLOSES_MONTHS * month)
    lo = np.clip(opens, t0, t0 + w_us)
    hi = np.clip(closes, t0, t0 + w_us)
    days = np.where(end >= 0, (hi - lo) / US_PER_DAY, 0.0)
    rate = RENEWAL_RATE[0] * (RENEWAL_RATE[1] + view.col("loyalty", idx))
    dis = view.col("disengaged_at", idx)
    engaged = ~((dis >= 0) & (dis <= t0))
    postpaid = np.asarray(profile_at(p, idx, t0, view.plans)["plan"]) != "prepaid"
    prob = np.where(engaged, 1 - (1 - rate) ** days, 0.0)
    floor = postpaid & (prob < RENEWAL_FLOOR)
    prob = np.where(floor, RENEWAL_FLOOR, prob) * postpaid
    lo = np.where(floor, t0, lo)
    hi = np.where(floor, t0 + w_us, hi)
    return prob, lo, hi


# --- exits --------------------------------------------------------------------------------
def goal_ends_dialog(journey: Journey) -> bool:
    """Whether reaching the goal ends the instance (exit_on_goal, or an exit rule it fires)."""
    return journey.rules.exit_on_goal or any(_fires_on_goal(r, journey) for r in journey.exit)


def _fires_on_goal(rule: ExitRule, journey: Journey) -> bool:
    g = journey.goal
    if rule.event == g.event:
        return rule.product in ("any", g.product)
    return rule.event == "checkout" and g.event == "purchase"


def other_exit_events(journey: Journey) -> list[str]:
    """Events other than the goal that end the dialog, with one rate each (a purchase and
    its checkout are one act)."""
    out: list[str] = []
    for k, r in enumerate(journey.exit):
        if r.product != "any":
            if r.event == journey.goal.event and r.product == journey.goal.product:
                continue
            raise Unsupported(f"exit[{k}].product: only 'any' or the goal's product is simulated")
        if r.event == journey.goal.event and r.event != "purchase":
            continue
        ev = "purchase" if r.event == "checkout" else r.event
        if ev not in OTHER_EVENTS:
            raise Unsupported(f"exit[{k}].event: {r.event!r} has no rate in the simulator")
        if ev not in out:
            out.append(ev)
    return out
