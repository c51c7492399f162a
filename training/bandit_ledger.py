"""The bandit learning from the decision ledger: rewards, offline fit, OPE-gated retraining.

Split from :mod:`training.bandit` so the policy module stays the one place the VW example is
written; this one turns logged decisions and their outcomes into rewards, replays them into a
policy, scores policies on logs (for OPE) and runs ``nextbest train bandit``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from nextbest.settings import BanditReward, Settings
from record.attribution import credit, delivered, sane_rows
from training.bandit import BanditPolicy, cold_offers, offer_features
from training.bandit_registry import (
    MODEL_NAME,
    BanditError,
    cold_start_options,
    load_bandit,
    register,
)

MIN_EXAMPLES = 50
MIN_JUDGED = 20  # recent decisions a challenger and its champion are compared on, at least
# the outcome types each reward counts (Settings.bandit_reward)
COUNTED: dict[BanditReward, tuple[str, ...]] = {
    "spend": ("conversion", "revenue"),
    "conversion": ("conversion",),
}


def logged_examples(
    logs: pd.DataFrame,
    outcomes: pd.DataFrame,
    costs: Mapping[str, float],
    attribution_days: float,
    reward: BanditReward = "spend",
    customer_map: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Decisions the bandit can learn from, each with its reward.

    Which orders count for which decision is :func:`record.attribution.credit`'s rule (each
    order once, to one delivered decision, within ``attribution_days`` after it; ``logs`` should
    hold every decision of the people, since an order goes to their last one).
    ``spend`` reward = the value of every order credited to the decision (its offer's
    conversions and the customer's other purchases) minus the cost of the offer of each
    converted order. Counting the customer's other spending makes the reward's expectation
    differ between offers by exactly their incremental value, so the bandit learns uplift, not
    who buys anyway. ``conversion`` reward counts the conversion orders only: every other
    purchase's noise is gone, but so is the correction for people who would have bought the
    offer's product anyway (measured: README, bandit replay).
    Holdout rows, undelivered ones (a message pending or cancelled), forced choices (one
    allowed offer), rows without an offer or propensity, and rows without the logged feature
    snapshot (``scores["features"]``) are left out. Forced choices matter: caps leave heavy
    visitors only ``no_offer``, and learning those rows would credit ``no_offer`` with the
    baseline spending of the people who visit most.
    """
    if reward not in COUNTED:
        raise ValueError(f"reward: {reward!r} is not one of {', '.join(COUNTED)}")
    cols = ["decision_id", "ts", "features", "channel", "context", "allowed", "offer_id"]
    cols += ["propensity", "probabilities", "reward", "scores", "p_treated"]
    if logs.empty:
        return pd.DataFrame(columns=cols)
    df = logs[(logs["arm"] == "treatment") & logs["offer_id"].notna() & logs["propensity"].notna()]
    df = df[delivered(df) & (df["probabilities"].map(len) >= 2)]  # forced: BanditPolicy.learn
    df = df.assign(features=[_snapshot(r) for r in df.itertuples(index=False)])
    df = df[df["features"].notna()].copy()
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    window = pd.Timedelta(days=attribution_days)
    credited = credit(logs, outcomes, window, customer_map)
    credited = credited[credited["type"].isin(COUNTED[reward])]
    paid = credited["cost_offer"].map(lambda x: float(costs.get(x, 0.0)) if x else 0.0)
    by_decision = credited.assign(net=credited["value"].astype(float) - paid)
    net = by_decision.groupby("decision_id")["net"].sum()
    df["reward"] = df["decision_id"].map(net).fillna(0.0).astype(float).to_numpy()
    df["context"] = df["context"].map(lambda c: {k: v for k, v in c.items() if k != "features"})
    df["allowed"] = df["probabilities"].map(lambda p: list(p))
    df["p_treated"] = df["scores"].map(_treated_rates)
    df["scores"] = df["scores"].map(_model_values)
    return df[cols].sort_values("ts").reset_index(drop=True)


def _snapshot(row: Any) -> dict[str, Any] | None:
    """The customer features the decision saw, logged with it (scores, else context)."""
    for holder in (row.scores, row.context):
        if isinstance(holder, dict) and isinstance(holder.get("features"), dict):
            return holder["features"]
    return None


def _model_values(scores: Any) -> dict[str, float] | None:
    """The arbitration's expected incremental values logged with a decision, if any."""
    value = scores.get("value") if isinstance(scores, dict) else None
    return value if isinstance(value, dict) and value else None


def _treated_rates(scores: Any) -> dict[str, float] | None:
    """The uplift model's conversion probabilities if shown, logged with a decision, if any."""
    rates = scores.get("p_treated") if isinstance(scores, dict) else None
    return rates if isinstance(rates, dict) and rates else None


def fit(policy: BanditPolicy, examples: pd.DataFrame) -> BanditPolicy:
    """One pass over logged examples in time order (what the policy would have seen online)."""
    for r in examples.itertuples(index=False):
        policy.learn(
            r.features, r.channel, r.context, r.allowed, r.offer_id, r.propensity, r.reward,
            getattr(r, "scores", None), getattr(r, "p_treated", None),
        )  # fmt: skip
    return policy


def logged_distribution(policy: Any, row: Any) -> dict[str, float]:
    """A policy's distribution for a logged example (a row of :func:`logged_examples`), given
    the model scores the decision saw (a fixed policy ignores them)."""
    scores, rates = getattr(row, "scores", None), getattr(row, "p_treated", None)
    return policy.distribution(row.features, row.channel, row.context, row.allowed, scores, rates)


def target_probabilities(policy: Any, examples: pd.DataFrame) -> np.ndarray:
    """The evaluated policy's probability of each logged offer, over the logged allowed set."""
    return np.array(
        [
            logged_distribution(policy, r).get(r.offer_id, 0.0)
            for r in examples.itertuples(index=False)
        ]
    )


def offer_costs(offers: Iterable[Any]) -> dict[str, float]:
    """What each offer gives away when it converts: the cost a reward subtracts."""
    return {o.id: float(o.cost) for o in offers}


def catalog_actions(settings: Settings) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Action features and cost per offer, from the one offer catalogue."""
    from offers.catalog import load_catalog

    catalog = load_catalog()
    return offer_features(catalog), offer_costs(catalog.offers)


def ledger_examples(
    settings: Settings,
    since: datetime | None = None,
    customer_map: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The learnable rows of the decision ledger, with rewards (``customer_map``: ids merged
    away -> the id they were merged into, so a person's orders count under any identity).
    Rows no count can take are left out (``record.attribution.sane_rows``: an outcome worth
    1e300 would make every reward and estimate meaningless), counted in ``attrs["skipped"]``."""
    from nextbest.db import engine_for
    from record.ledger import Ledger

    ledger = Ledger(engine_for(settings.ledger_db_url))
    _, costs = catalog_actions(settings)
    logs, outcomes, skipped = sane_rows(
        ledger.logs(since=since), ledger.outcomes_frame(), settings.max_money_value
    )
    examples = logged_examples(
        logs, outcomes, costs, settings.attribution_days, settings.bandit_reward, customer_map
    )
    examples.attrs["skipped"] = skipped
    return examples


def reward_scale(rewards: np.ndarray) -> float:
    """A typical non-zero reward size, so VW's costs stay near [-1, 1] whatever the currency."""
    nonzero = np.abs(rewards[rewards != 0])
    return float(np.quantile(nonzero, 0.9)) if nonzero.size else 1.0


def unseen_by(champion: Any, examples: pd.DataFrame) -> pd.DataFrame:
    """The examples logged after the last decision the champion was trained on (all of them
    when it does not say): the only ones it can be judged on out of sample."""
    through = getattr(getattr(champion, "policy", champion), "trained_through", None)
    if through is None:
        return examples
    ts = pd.Timestamp(through)
    return examples[examples["ts"] > (ts.tz_localize("UTC") if ts.tzinfo is None else ts)]


def beats(advantage: Any, margin: float) -> tuple[bool, str]:
    """The promotion gate: whether a challenger beats the champion, and why. It does when the
    lower 95% bound of its paired advantage (:func:`estimation.ope.snips_advantage`) is above
    ``margin``; a higher point value alone is noise as often as not. No champion: it wins."""
    if advantage is None:
        return True, "no champion to beat"
    verdict = "beats" if advantage.ci_low > margin else "does not beat"
    return advantage.ci_low > margin, (
        f"advantage {advantage.value:+.4g} per decision (95% CI {advantage.ci_low:+.4g} to "
        f"{advantage.ci_high:+.4g}, n={advantage.n}): {verdict} the champion by more than the "
        f"margin {margin:g}"
    )


def train_bandit(
    settings: Settings,
    promote: bool,
    *,
    recent_share: float = 0.2,
    examples: Any = None,
    champion: Any = "store",
) -> dict[str, Any]:
    """Retrain from the ledger; promote when OPE on recent logs says it beats the champion.

    The challenger learns on the older logs and is judged, with the champion, on the recent
    ones neither has learned (SNIPS with the logged propensities; the recent decisions after
    the champion's ``trained_through``, at least ``MIN_JUDGED`` of them, else it is not judged
    and not promoted); then it learns the recent ones too.
    It beats the champion when the lower bound of its paired advantage is above
    ``Settings.bandit_promotion_margin`` (:func:`beats`), not when a point value is higher.
    ``champion``: the promoted model in the store by default; the replay passes its own (or
    None before its first promotion), so a champion left by an earlier run does not judge it.
    """
    from estimation.ope import ips, snips, snips_advantage

    data = ledger_examples(settings) if examples is None else examples
    if len(data) < MIN_EXAMPLES:
        raise BanditError(
            f"ledger: {len(data)} learnable decisions (treatment, offer shown, propensity and "
            f"feature snapshot logged), need at least {MIN_EXAMPLES}"
        )
    actions, _ = catalog_actions(settings)
    cut = int(len(data) * (1 - recent_share))
    old, recent = data.iloc[:cut], data.iloc[cut:]
    scale = reward_scale(data["reward"].to_numpy(float))
    if champion == "store":
        try:
            champion = load_bandit(settings)
        except BanditError:  # a champion of an older example format cannot be scored: replace it
            champion = None
    fresh = BanditPolicy(
        actions,
        version="challenger",
        exploration=settings.bandit_exploration,
        reward_scale=scale,
        seed=settings.seed,
        epsilon=settings.epsilon,
        # offers still in cold start for the champion stay so, their learned shows counted
        # again from the logs; without a champion nothing is new
        cold=dict.fromkeys(cold_offers(champion, list(actions)), 0),
        **cold_start_options(settings),
    )
    challenger = fit(fresh, old)
    window = unseen_by(champion, recent)  # a champion judged on logs it learned looks better
    unseen = len(window)
    judged = champion is None or unseen >= MIN_JUDGED
    window = window if judged else recent
    r, p = window["reward"].to_numpy(float), window["propensity"].to_numpy(float)
    new_target = target_probabilities(challenger, window)
    ope: dict[str, Any] = {"challenger": snips(r, p, new_target)}
    ope["logging"] = ips(r, p, p)
    if champion is not None and judged:
        old_target = target_probabilities(champion, window)
        ope["champion"] = snips(r, p, old_target)
        ope["advantage"] = snips_advantage(r, p, new_target, old_target)
    fit(challenger, recent)
    better, gate = beats(ope.get("advantage"), settings.bandit_promotion_margin)
    if not judged:
        better = False
        gate = (
            f"only {unseen} of the {len(recent)} recent decisions are newer than the "
            f"champion's training logs (need {MIN_JUDGED}): not judged"
        )
    through = pd.Timestamp(data["ts"].max()).to_pydatetime()
    verdict = {"gate": gate, "gate_champion": _version_of(champion)}
    if "advantage" in ope:
        verdict["gate_advantage"] = ope["advantage"].model_dump_json()
    version = register(
        settings, challenger, ope, n=len(data), promote=promote and better,
        trained_through=through, tags=verdict,
    )  # fmt: skip
    return {
        "model": MODEL_NAME,
        "version": version,
        "examples": len(data),
        "evaluated_on": len(window),
        "reward_scale": scale,
        "exploration": challenger.exploration,
        "ope": {k: v.model_dump() for k, v in ope.items()},
        "beats_champion": better,
        "gate": gate,
        "promoted": promote and better,
    }


def _version_of(champion: Any) -> str:
    """The registered version a champion was loaded as (``bandit:3``), before online updates."""
    if champion is None:
        return "none"
    return str(getattr(champion, "base_version", getattr(champion, "version", "unknown")))
