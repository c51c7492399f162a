"""``nextbest promote MODEL`` and ``POST /promote/{model}``: one entry for every model.

Churn and propensity go through the MLflow registry's gate (:func:`training.registry.promote`);
the bandit through the gate ``nextbest train bandit --promote`` applies
(:func:`training.bandit_ledger.beats`: the lower bound of its paired advantage over the
champion above ``Settings.bandit_promotion_margin``), so a promotion by hand is held to the
same standard as one at training time. CLV through :func:`training.clv_registry.promote` (the
lower validation MAE on the same window), and a promotion re-scores ``customer_value``.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from estimation.ope import Estimate, snips_advantage
from nextbest.settings import Settings
from training import clv_registry, registry
from training.bandit import BanditPolicy
from training.bandit_ledger import (
    MIN_EXAMPLES,
    beats,
    ledger_examples,
    target_probabilities,
    unseen_by,
)
from training.bandit_registry import MODEL_NAME, load_registered, make_champion, registered_run
from training.registry import Promotion, RegistryError, UnknownModel

MODELS = (*registry.GATE_METRIC, MODEL_NAME, clv_registry.MODEL_NAME)


def promote(settings: Settings, model: str) -> Promotion:
    """Make the model's challenger champion if it passes that model's gate."""
    if model not in MODELS:
        raise UnknownModel(f"model: '{model}' is not one of {', '.join(MODELS)}")
    if model == clv_registry.MODEL_NAME:
        return promote_clv(settings)
    return promote_bandit(settings) if model == MODEL_NAME else registry.promote(settings, model)


def promote_clv(settings: Settings) -> Promotion:
    """The CLV gate; a new champion re-scores every customer's ``clv_12m`` at once (files and
    online store), since the profile carries values, not a model."""
    from training.clv_world import champion_values, materialize_values

    result = clv_registry.promote(settings)
    if result.promoted:
        scored = champion_values(settings)
        materialize_values(settings)
        result.reason += f"; customer_value re-scored by {scored['scored_by']}"
    return result


def promote_bandit(settings: Settings) -> Promotion:
    """The registered bandit challenger against the champion, paired on the decisions logged
    since the challenger was trained (neither model learned them). With fewer than
    ``MIN_EXAMPLES`` of those, its training run's verdict stands when it was judged against
    today's champion; otherwise it must be retrained (a :class:`RegistryError`)."""
    found = registered_run(settings, "challenger")
    if found is None:
        raise RegistryError("model: 'bandit' has no challenger; run `nextbest train bandit` first")
    version, tags = found
    previous, champion_tags = registered_run(settings, "champion") or (None, {})
    result = Promotion(
        model=MODEL_NAME,
        promoted=False,
        challenger_version=version,
        champion_version=previous,
        previous_champion=previous,
        metric="snips_advantage_ci_low",
        challenger_score=None,
        champion_score=None,
        reason=f"version {version} is already champion",
    )
    if previous == version:
        return result
    through = _through(tags)
    challenger = load_registered(settings, "challenger")
    champion = load_registered(settings, "champion") if previous else None
    if champion is None:
        better, gate = beats(None, settings.bandit_promotion_margin)
    else:  # logs neither learned: after the challenger's training logs (and the champion's)
        challenger.trained_through, champion.trained_through = through, _through(champion_tags)
        fresh = unseen_by(champion, unseen_by(challenger, ledger_examples(settings, since=through)))
        better, gate, advantage = _judge(settings, tags, previous, challenger, champion, fresh)
        if advantage is not None:
            result.challenger_score = advantage.ci_low
            result.champion_score = settings.bandit_promotion_margin
    result.promoted, result.reason = better, gate
    if better:
        result.champion_version = version
        result.bentoml_tag = make_champion(settings, challenger, version, through)
    return result


def _through(tags: dict[str, str]) -> datetime | None:
    """The time of the last decision a registered version learned (its run's tag)."""
    through = tags.get("trained_through")
    return datetime.fromisoformat(through) if through else None


def _judge(
    settings: Settings,
    tags: dict[str, str],
    previous: str | None,
    challenger: BanditPolicy,
    champion: BanditPolicy,
    fresh: pd.DataFrame,
) -> tuple[bool, str, Estimate | None]:
    """The verdict on the challenger: on ``fresh`` logs when there are enough, else its
    training run's when that judged it against this champion; else it must be retrained."""
    margin = settings.bandit_promotion_margin
    if len(fresh) >= MIN_EXAMPLES:
        r, p = fresh["reward"].to_numpy(float), fresh["propensity"].to_numpy(float)
        new, old = target_probabilities(challenger, fresh), target_probabilities(champion, fresh)
        advantage = snips_advantage(r, p, new, old)
        better, gate = beats(advantage, margin)
        return better, f"{gate} (on {len(fresh)} decisions logged since it was trained)", advantage
    if tags.get("gate_champion") != f"{MODEL_NAME}:{previous}":
        raise RegistryError(
            f"model: bandit was judged against {tags.get('gate_champion', 'none')} when "
            f"trained, the champion is now {MODEL_NAME}:{previous}, and {len(fresh)} decisions "
            f"were logged since (need {MIN_EXAMPLES} to judge it again); retrain with "
            "`nextbest train bandit`"
        )
    if "gate_advantage" not in tags:  # its training run could not judge it either
        return False, f"{tags.get('gate', 'not judged')} (at training)", None
    advantage = Estimate.model_validate_json(tags["gate_advantage"])
    better, gate = beats(advantage, margin)
    return better, f"{gate} (on the recent logs its training run held out)", advantage
