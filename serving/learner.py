"""The serving bandit learning as outcomes arrive: each decision once, when its reward is known.

A decision's reward (``training.bandit_ledger.logged_examples``: conversion value minus the
offer's cost, plus the customer's other spending) is only known once its outcomes had time to
arrive. Like Azure Personalizer's reward wait time, a decision is learned once, when it is
older than ``Settings.bandit_reward_wait_minutes``, with the outcomes that arrived within that
wait (never beyond the attribution window, which bounds the batch reward too). The rows the
batch path leaves out (holdout, forced choices, no feature snapshot) are left out here as well:
the same function decides.

A watermark (the time of the last decision handled plus the ids at that time) makes each
decision learned exactly once. It starts just after the last decision the serving champion
was trained on (:func:`start_for`), since those are the batch retrain's (``nextbest train
bandit``); for a champion that does not say, when the service starts. Each tick reads only
the decisions between the watermark and ``now - wait`` (see :func:`matured_before`) and their
outcomes, in pages. One learner process runs this for the service
(``serving.learner_process``) and publishes the policy the workers swap in. A bandit promoted
while the service runs is adopted on its next tick (:func:`adopt_promoted`), and the watermark
moves to the last decision it was trained on, so no decision is learned twice or skipped.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import and_, or_, select

from nextbest.settings import BanditReward
from record.attribution import ORDER_TYPES
from record.tables import decisions, outcomes, utc
from training.bandit import offer_features
from training.bandit_ledger import logged_examples, offer_costs

log = logging.getLogger("nextbest.learner")

# decisions per page: their ids and customer ids stay under SQLite's 999 bound variables
PAGE = 400
_COLUMNS = ("decision_id", "ts", "customer_id", "channel", "context", "arm", "offer_id")
_COLUMNS += ("propensity", "probabilities", "scores", "status")


class Learner:
    """The learner's watermark and counters (the learner process's heartbeat carries them to
    ``/healthz``)."""

    def __init__(self, start: datetime) -> None:
        self.ts = utc(start)  # every decision before ``ts`` (and ``ids`` at it) is handled
        self.ids: set[str] = set()
        self.learned = 0  # decisions learned into the policy
        self.skipped = 0  # matured decisions the batch path would not learn either
        self.refused = 0  # decisions the policy refused (e.g. an offer left the catalogue)
        self.last_run: datetime | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one tick at a time

    def handled(self, ts: datetime, decision_id: str) -> None:
        """Move the watermark past one decision (decisions come in time order)."""
        if ts == self.ts:
            self.ids.add(decision_id)
        else:
            self.ts, self.ids = ts, {decision_id}

    def state(self) -> dict[str, Any]:
        return {
            "watermark": self.ts.isoformat(),
            "learned": self.learned,
            "skipped": self.skipped,
            "refused": self.refused,
            "last_run": self.last_run.isoformat() if self.last_run else None,
            "last_error": self.last_error,
        }


def policy_of(bandit: Any) -> Any:
    """The policy that learns: the bandit itself, or the one a wrapper (the replay's
    ``Recorder``) holds in ``.policy``; None when nothing promoted can learn."""
    policy = getattr(bandit, "policy", bandit)
    return policy if callable(getattr(policy, "learn", None)) else None


def just_after(ts: datetime) -> datetime:
    """A watermark start that counts every decision up to ``ts`` as handled (the ledger keeps
    microseconds)."""
    return utc(ts) + timedelta(microseconds=1)


def start_for(deps: Any) -> datetime:
    """Where a worker's watermark starts: just after the last decision the serving champion
    was trained on, so a restarted worker learns again what its lost online updates had
    learned; without that time (no bandit, an older model), now."""
    through = getattr(policy_of(deps.bandit), "trained_through", None)
    return just_after(through) if through is not None else deps.clock()


def adopt_promoted(deps: Any) -> str | None:
    """Swap in the promoted bandit when it is not the one serving (promoted by
    ``nextbest train bandit --promote`` while the service runs), with the watermark just after
    the last decision it learned. Its version, or None when nothing changed. A promoted model
    that cannot be loaded leaves the serving one in place and ``/healthz`` degraded."""
    from training.bandit_registry import load_bandit, promoted_version

    version = promoted_version(deps.settings)
    if version is None or version == getattr(policy_of(deps.bandit), "base_version", None):
        return None
    try:
        policy = load_bandit(deps.settings)
    except Exception as exc:  # noqa: BLE001 - e.g. an older example format: keep serving
        deps.missing["bandit"] = f"promoted {version} not loaded: {type(exc).__name__}: {exc}"
        log.warning("%s", deps.missing["bandit"])
        return None
    if policy is None:  # removed from the store since it was read
        return None
    learner = getattr(deps, "learner", None)
    if not isinstance(learner, Learner):  # a worker (it follows the learner process) or none
        deps.bandit = policy
    else:
        with learner._lock:  # not in the middle of a tick that learns into the old policy
            deps.bandit = policy
            if policy.trained_through is not None:
                learner.ts, learner.ids = just_after(policy.trained_through), set()
    deps.missing.pop("bandit", None)
    return version


def reward_window(settings: Any) -> timedelta:
    """The outcomes a learned decision counts: those within the wait, and never beyond the
    attribution window (what the batch reward counts)."""
    wait = timedelta(minutes=settings.bandit_reward_wait_minutes)
    return min(wait, timedelta(days=settings.attribution_days))


def matured_before(settings: Any, now: datetime) -> datetime:
    """Decisions at or before this time are learnable: older than the wait, and older than a
    request may take (``request_timeout``), so a row still being committed when the tick runs
    is not passed over by the watermark."""
    wait = timedelta(minutes=settings.bandit_reward_wait_minutes)
    return utc(now) - max(wait, timedelta(seconds=settings.request_timeout))


def learn_matured(deps: Any, now: datetime) -> int:
    """Learn every matured decision not learned before into ``deps.bandit``, in time order;
    the number learned. ``deps.learner`` keeps the watermark (made here, starting at ``now``,
    when absent). With no bandit to learn into, matured decisions are passed over."""
    learner: Learner | None = getattr(deps, "learner", None)
    if learner is None:
        learner = deps.learner = Learner(start=now)
    with learner._lock:
        learner.last_run = utc(now)
        try:
            n = _learn(deps, learner, matured_before(deps.settings, now))
        except Exception as exc:
            learner.last_error = f"{type(exc).__name__}: {exc}"[:300]
            raise
        learner.last_error = None
        return n


def _learn(deps: Any, learner: Learner, upper: datetime) -> int:
    window = reward_window(deps.settings)
    costs = offer_costs(deps.offers())
    # offers new to the catalogue since the model was trained: their decisions are learned too
    catalogue = offer_features(deps.catalog) if deps.offers() else {}
    reward = deps.settings.bandit_reward
    learned = 0
    while True:
        rows = _matured(deps.ledger.engine, learner, upper)
        if not rows:
            return learned
        learning = policy_of(deps.bandit) is not None
        examples = _examples(deps.ledger.engine, rows, costs, window, reward) if learning else {}
        for row in rows:
            ex = examples.get(row["decision_id"])
            policy = policy_of(deps.bandit)  # per decision: a promotion may swap it
            if ex is None or policy is None:
                learner.skipped += 1
            else:
                if callable(getattr(policy, "add_offers", None)):
                    policy.add_offers(catalogue)
                try:
                    policy.learn(
                        ex.features, ex.channel, ex.context, ex.allowed, ex.offer_id,
                        ex.propensity, ex.reward, ex.scores, ex.p_treated,
                    )  # fmt: skip
                except ValueError as exc:  # this decision can never be learned: pass it over
                    learner.refused += 1
                    log.warning("bandit refused decision %s: %s", row["decision_id"], exc)
                else:
                    learned += 1
                    learner.learned += 1
            learner.handled(utc(row["ts"]), row["decision_id"])
        if len(rows) < PAGE:
            return learned


def _matured(engine: Any, learner: Learner, upper: datetime) -> list[dict[str, Any]]:
    """The next page of decisions after the watermark and at or before ``upper`` (a range
    read once ``decisions.ts`` has an index of its own; without one SQLite scans the table:
    ~30 ms per 200k decisions, measured)."""
    ts, did = decisions.c.ts, decisions.c.decision_id
    after = ts >= learner.ts
    if learner.ids:
        after = or_(ts > learner.ts, and_(ts == learner.ts, did.not_in(sorted(learner.ids))))
    q = (
        select(*(decisions.c[c] for c in _COLUMNS))
        .where(after, ts <= upper)
        .order_by(ts, did)
        .limit(PAGE)
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings().all()]


def _examples(
    engine: Any,
    rows: list[dict[str, Any]],
    costs: dict[str, float],
    window: timedelta,
    reward: BanditReward,
) -> dict[str, Any]:
    """The learnable decisions among ``rows`` with their rewards, by decision id: the batch
    path's ``logged_examples`` (so ``record.attribution.credit``'s rule) over these
    decisions, the people's later decisions that may take an order from them (an order without
    a decision goes to the person's last one), and the orders all of them can count."""
    ids = [r["decision_id"] for r in rows]
    people = sorted({r["customer_id"] for r in rows if r["customer_id"] is not None})
    times = [utc(r["ts"]) for r in rows]
    start, end = min(times), max(times) + window
    d, o = decisions.c, outcomes.c
    later: list[dict[str, Any]] = []
    if people:
        q = select(*(d[c] for c in _COLUMNS)).where(
            d.customer_id.in_(people), d.ts >= start, d.ts <= end, d.decision_id.not_in(ids)
        )
        with engine.connect() as conn:
            later = [dict(r) for r in conn.execute(q).mappings().all()]
    every = [*rows, *later]
    logs = pd.DataFrame(every, columns=list(_COLUMNS))
    linked = o.decision_id.in_([r["decision_id"] for r in every])
    if people:  # the customer's purchases that name no decision
        free = and_(o.decision_id.is_(None), o.customer_id.in_(people), o.ts >= start)
        linked = or_(linked, free)
    q = select(
        o.idempotency_key, o.order_id, o.offer_id, o.decision_id, o.customer_id, o.type,
        o.value, o.ts,
    ).where(o.type.in_(ORDER_TYPES), o.ts <= end, linked)  # fmt: skip
    with engine.connect() as conn:
        found = pd.DataFrame(conn.execute(q).mappings().all())
    days = window / timedelta(days=1)
    examples = logged_examples(logs, found, costs, days, reward)  # fractional days: a Timedelta
    return {r.decision_id: r for r in examples.itertuples(index=False) if r.decision_id in ids}
