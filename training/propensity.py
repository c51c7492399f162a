"""Propensity and uplift per offer: P(convert | treated) and P(convert | not treated).

Rows are past campaign exposures with a randomised holdout; ``offer_id`` and ``channel`` are
model columns, so one model covers every offer (offers with few exposures borrow strength).
Three learners are built and all are measured on every run:
- S-learner: one booster with a ``treated`` column; uplift = f(x, 1) - f(x, 0).
- T-learner: one booster on treated rows, one on holdout rows; uplift = difference.
- staged S-learner: one booster grown in three stages, each early-stopped: the baseline f(x)
  blind to the arm; then stumps split on ``treated`` alone (one treatment effect on the logit
  scale, pooled over every offer and customer); then small trees whose root is forced onto
  ``treated`` (who it works better or worse for). An effect of a point or less is too small
  for a plain S-learner to split on, so it predicted about 0 (and below 0 for 70% of the
  rows); pooling on the logit scale lets an offer's baseline carry its uplift (uplift league,
  docs/benchmarks.md).
The holdout is small (about 10-20%), so the T-learner's untreated model is noisy; the S-learners
share the baseline between arms. ``DEFAULT_LEARNER`` is the one that measured better (README).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr
from sklearn.model_selection import GroupShuffleSplit

from training.evaluate import calibration_plot, classification_metrics, qini_plot, uplift_metrics
from training.scoring import OFFER_COLUMNS, TREATED, ModelSpec, Scorer, encode, fit_categories

Learner = Literal["s", "t", "staged"]
DEFAULT_LEARNER: Learner = "staged"
# the staged learner's effect stages: (num_leaves, min_child_samples, lambda_l2)
EFFECT_STAGES = ((2, 200, 50.0), (4, 200, 50.0))
MIN_ARM_ROWS = 40  # fewer rows in an arm than this: no effect is fitted (uplift 0)
PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": "binary_logloss",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 40,
    "lambda_l2": 5.0,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "verbose": -1,
    "num_threads": 2,
}


def _fit_one(
    x: np.ndarray,
    y: np.ndarray,
    groups: pd.Series,
    cats: list[int],
    max_rounds: int,
    seed: int,
    init: lgb.Booster | None = None,
    **overrides: Any,
) -> lgb.Booster:
    """Early stopping on a customer-grouped 15%, then a refit on all rows with that many rounds
    (continuing ``init``'s trees when given: the result holds both)."""
    inner, stop = next(GroupShuffleSplit(1, test_size=0.15, random_state=seed).split(x, y, groups))
    # OpenMP threads cost more than they give on small frames (and on a busy 2-core box)
    params = dict(PARAMS, seed=seed, num_threads=1 if len(y) < 20_000 else PARAMS["num_threads"])
    params.update(overrides)

    def data(idx: np.ndarray) -> lgb.Dataset:
        return lgb.Dataset(x[idx], y[idx], categorical_feature=cats, free_raw_data=False)

    probe = lgb.train(
        params,
        data(inner),
        num_boost_round=max_rounds,
        valid_sets=[data(stop)],
        init_model=init,
        callbacks=[lgb.early_stopping(50, verbose=False)],
    )
    start = init.current_iteration() if init is not None else 0
    rounds = probe.best_iteration - start
    if init is not None and rounds < 1:
        return init  # the validation rows asked for no more trees
    full = data(np.arange(len(y)))
    return lgb.train(params, full, num_boost_round=max(rounds, 1), init_model=init)


def _fit_staged(
    x: np.ndarray, y: np.ndarray, groups: pd.Series, cats: list[int], max_rounds: int, seed: int
) -> lgb.Booster:
    """Baseline blind to the arm, then the treatment effect: pooled stumps, then small trees,
    every stage rooted on ``treated`` (the last column) and early-stopped on its own."""
    blind = x.copy()
    blind[:, -1] = 0.0  # a constant column: no tree of the baseline can split on it
    booster = _fit_one(blind, y, groups, cats, max_rounds, seed)
    # a forced split must leave each leaf min_child_samples rows of the early-stopping fit
    # (LightGBM crashes otherwise): small arms get smaller leaves, tiny ones no effect at all
    smaller_arm = int(min(x[:, -1].sum(), len(x) - x[:, -1].sum()) * 0.85)
    if smaller_arm < MIN_ARM_ROWS:
        return booster
    with tempfile.TemporaryDirectory() as tmp:
        forced = Path(tmp) / "treated_root.json"
        # bins of a 0/1 column: the split "<= 0" sends holdout left and treated right
        forced.write_text(json.dumps({"feature": x.shape[1] - 1, "threshold": 0.0}))
        for leaves, min_rows, l2 in EFFECT_STAGES:
            booster = _fit_one(
                x, y, groups, cats, max_rounds, seed, init=booster,
                num_leaves=leaves, min_child_samples=min(min_rows, smaller_arm // 4), lambda_l2=l2,
                forcedsplits_filename=str(forced), feature_fraction=1.0,
                bagging_fraction=1.0, bagging_freq=0,
            )  # fmt: skip
    return booster


def fit_uplift(
    train: pd.DataFrame,
    features: list[str],
    feature_service: str,
    *,
    learner: Learner = DEFAULT_LEARNER,
    max_rounds: int = 2000,
    seed: int = 0,
    context: tuple[str, ...] = OFFER_COLUMNS,
) -> tuple[Scorer, dict[str, Any]]:
    """Fit an S- or T-learner on exposure rows (features, offer_id, channel, treated, label).

    ``context`` are the request-time columns after the features (none for a plain experiment
    table, e.g. ``nextbest uplift train``); rows are grouped by ``customer_id`` when present."""
    extra = list(context) + ([TREATED] if learner != "t" else [])
    spec = ModelSpec(
        kind="propensity",
        learner="t" if learner == "t" else "s",  # a staged booster scores as an S-learner
        feature_service=feature_service,
        features=features,
        categories=fit_categories(train, features + list(context)),
        extra=extra,
    )
    cats = [i for i, c in enumerate(spec.columns) if c in spec.categories]
    x = encode(spec, train)
    y = train["label"].to_numpy(dtype=float)
    t = train[TREATED].to_numpy(dtype=float)
    groups = train["customer_id"] if "customer_id" in train else pd.Series(np.arange(len(y)))
    if learner == "s":
        boosters = [_fit_one(x, y, groups, cats, max_rounds, seed)]
    elif learner == "staged":
        boosters = [_fit_staged(x, y, groups, cats, max_rounds, seed)]
    else:
        boosters = [
            _fit_one(x[t == arm], y[t == arm], groups[t == arm], cats, max_rounds, seed)
            for arm in (1.0, 0.0)
        ]
    info = {
        **PARAMS,
        "learner": learner,
        "rounds": ",".join(str(b.current_iteration()) for b in boosters),
        "train_rows": len(y),
        "train_treated_share": round(float(t.mean()), 4),
    }
    return Scorer(spec, boosters), info


def evaluate_uplift(scorer: Scorer, valid: pd.DataFrame) -> tuple[dict[str, float], dict[str, Any]]:
    """Qini/AUUC on held-out exposures; with simulator truth, correlation with true uplift."""
    scores = scorer.predict_frame(valid)
    y = valid["label"].to_numpy(dtype=float)
    t = valid[TREATED].to_numpy(dtype=float)
    uplift = scores["uplift"].to_numpy()
    p_obs = np.where(t == 1, scores["p_treated"], scores["p_untreated"])
    metrics = uplift_metrics(y, t, uplift)
    metrics.update({f"{k}_observed_arm": v for k, v in classification_metrics(y, p_obs).items()})
    if {"true_p_treated", "true_p_untreated"} <= set(valid.columns):
        true = (valid["true_p_treated"] - valid["true_p_untreated"]).to_numpy()
        metrics["true_uplift_pearson"] = float(pearsonr(uplift, true)[0])
        within = within_group_pearson(uplift, true, valid["offer_id"].to_numpy())
        if within is not None:
            metrics["true_uplift_pearson_within_offer"] = within
        metrics["true_uplift_spearman"] = float(spearmanr(uplift, true)[0])
        top = np.argsort(-uplift)[: max(len(uplift) // 10, 1)]
        metrics["true_uplift_top_decile"] = float(true[top].mean())
        metrics["true_uplift_mean"] = float(true.mean())
        metrics["true_qini_oracle"] = uplift_metrics(y, t, true)["qini"]
    plots = {"qini": qini_plot(y, t, uplift), "calibration": calibration_plot(y, p_obs)}
    return metrics, plots


def within_group_pearson(
    pred: np.ndarray, true: np.ndarray, groups: np.ndarray, min_rows: int = 20
) -> float | None:
    """Pearson of ``pred`` with ``true`` inside each group, averaged with the groups' sizes.

    The pooled correlation rewards a model that only knows which offer works best on average;
    within an offer it measures whether the model tells who it works for, which is what
    targeting needs. Groups smaller than ``min_rows`` or where either side is constant are
    left out; None when none is left."""
    total = weight = 0.0
    for g in np.unique(groups):
        m = groups == g
        p, t = pred[m], true[m]
        if m.sum() < min_rows or np.ptp(p) == 0 or np.ptp(t) == 0:
            continue
        total += float(pearsonr(p, t)[0]) * m.sum()
        weight += m.sum()
    return total / weight if weight else None
