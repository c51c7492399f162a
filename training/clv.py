"""Customer lifetime value: two models on the same point-in-time data, the better one chosen.

- ``btyd``: BG/NBD for repeat purchase days and Gamma-Gamma for spend per purchase day
  (``pymc-marketing`` 0.19, flat priors fitted by MAP: the maximum-likelihood fit ``lifetimes``
  made, on a maintained library, in seconds instead of a sampler's minutes).
- ``lightgbm``: LightGBM on point-in-time RFM features (plus the numeric profile features of a
  FeatureService as of each cutoff when ``extra`` reads them), trained on earlier windows of
  the same length as the validation window (labels: purchase days and spend in the window after
  each cutoff). A tree cannot extrapolate to a longer horizon than it saw, so its window prediction
  is stretched to the horizon by the BG/NBD curve of each customer (``E[h]/E[window]``).

Choice: both are fitted as of ``calibration_end - window``, judged on the window up to the
calibration end (per-customer MAE of purchase days), refitted as of the calibration end, and
the better one predicts. ``p_alive`` always comes from BG/NBD (the trees have no such notion).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from pydantic import BaseModel

from training.clv_btyd import Btyd, btyd_predict, fit_btyd
from training.clv_data import DAY, outcomes_between, purchase_days, summary_at

ModelName = Literal["btyd", "lightgbm"]
# point-in-time profile features of (customer_id, cutoff) rows, in their order (a FeatureService
# read: one call for every cutoff of a fit), or None
Extra = Callable[[pd.DataFrame], pd.DataFrame] | None
OUTPUT_COLUMNS = ("customer_id", "expected_purchases", "expected_value", "p_alive")
LGB_PARAMS: dict[str, Any] = {
    "learning_rate": 0.03,
    "num_leaves": 7,
    "min_child_samples": 40,
    "lambda_l2": 10.0,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "num_threads": 1,
    "verbose": -1,
}
LGB_ROUNDS = 300
MIN_AGE_DAYS = 28  # a training cutoff needs this much history before it
MAX_CUTOFFS = 6


class TreesUnavailable(ValueError):
    """Too short a history for the tree model to learn a window: BG/NBD predicts alone."""


class Validation(BaseModel):
    """How one model did on the validation window (its truth is in the calibration data)."""

    model: ModelName
    mae_purchases: float
    predicted_purchases: float
    actual_purchases: float
    purchases_error_pct: float
    predicted_spend: float
    actual_spend: float
    spend_error_pct: float
    spearman_value: float


class ClvResult(BaseModel):
    """What ``nextbest clv predict --json`` prints."""

    chosen: ModelName
    calibration_end: str
    horizon_days: int
    validation_start: str
    validation_days: int
    customers: int
    validation: list[Validation]
    params: dict[str, float]
    seconds: dict[str, float]
    notes: list[str] = []


def _cutoffs(first: pd.Timestamp, end: pd.Timestamp, window: int) -> list[pd.Timestamp]:
    """Training cutoffs whose label window (c, c + window] ends by ``end``, latest first."""
    step = max(window // 3, 7)
    out, c = [], end - window * DAY
    while c >= first + MIN_AGE_DAYS * DAY and len(out) < MAX_CUTOFFS:
        out.append(c)
        c -= step * DAY
    return out


@dataclass
class Trees:
    """Two LightGBM regressors (purchase days, spend) for one window length."""

    purchases: lgb.Booster
    spend: lgb.Booster
    window: int
    rows: int
    columns: list[str]


def features_at(days: pd.DataFrame, cutoff: pd.Timestamp, extra: Extra = None) -> pd.DataFrame:
    """RFM summary as of ``cutoff``, joined with the numeric profile features as of then."""
    return _with_profile([summary_at(days, cutoff)], [cutoff], extra)[0]


def _with_profile(
    frames: list[pd.DataFrame], cutoffs: list[pd.Timestamp], extra: Extra
) -> list[pd.DataFrame]:
    """Each summary joined with its customers' profile features as of its cutoff, all read
    in one call (a Feast point-in-time join costs about a second whatever its size)."""
    if extra is None:
        return frames
    sizes = [len(f) for f in frames]
    keys = pd.DataFrame(
        {
            "customer_id": np.concatenate([f.index.to_numpy() for f in frames]),
            "cutoff": np.repeat(np.array(cutoffs, dtype="datetime64[ns]"), sizes),
        }
    )
    profile = extra(keys).select_dtypes(include=["number", "bool"]).astype(float)
    out, at = [], 0
    for f in frames:
        part = profile.iloc[at : at + len(f)].set_axis(f.index)
        at += len(f)
        out.append(f.join(part.drop(columns=list(f.columns), errors="ignore")))
    return out


def fit_trees(
    days: pd.DataFrame, end: pd.Timestamp, window: int, seed: int = 0, extra: Extra = None
) -> Trees:
    """Stack (features at c, outcome in (c, c + window]) over cutoffs c whose windows end by
    ``end``: nothing after ``end`` is read."""
    days = days.loc[days["date"] <= end]
    cutoffs = _cutoffs(days["date"].min(), end, window)
    if not cutoffs:
        raise TreesUnavailable(
            f"lightgbm: history before {end:%Y-%m-%d} is shorter than "
            f"{window + MIN_AGE_DAYS} days; the tree model has no window to learn from"
        )
    summaries = _with_profile([summary_at(days, c) for c in cutoffs], cutoffs, extra)
    frames = [
        pd.concat([x, outcomes_between(days, x.index, c, window)], axis=1)
        for x, c in zip(summaries, cutoffs, strict=True)
    ]
    train = pd.concat(frames, ignore_index=True)
    columns = [c for c in train.columns if c not in ("purchases", "spend")]
    x = train[columns].to_numpy(dtype=float)
    params = dict(LGB_PARAMS, seed=seed)
    purchases = lgb.train(
        dict(params, objective="poisson"),
        lgb.Dataset(x, train["purchases"].to_numpy(dtype=float)),
        num_boost_round=LGB_ROUNDS,
    )
    spend = lgb.train(
        dict(params, objective="tweedie", tweedie_variance_power=1.3),
        lgb.Dataset(x, train["spend"].to_numpy(dtype=float)),
        num_boost_round=LGB_ROUNDS,
    )
    return Trees(purchases, spend, window, len(train), columns)


def trees_predict(
    trees: Trees, btyd: Btyd, summary: pd.DataFrame, horizon_days: int
) -> pd.DataFrame:
    """Window predictions stretched to the horizon by each customer's BG/NBD curve."""
    x = summary.reindex(columns=trees.columns).to_numpy(dtype=float)
    purchases, spend = trees.purchases.predict(x), trees.spend.predict(x)
    ratio = np.ones(len(summary))
    base = btyd_predict(btyd, summary, horizon_days)
    if horizon_days != trees.window:
        at_window = btyd_predict(btyd, summary, trees.window)["expected_purchases"].to_numpy()
        ratio = base["expected_purchases"].to_numpy() / np.maximum(at_window, 1e-9)
    return pd.DataFrame(
        {
            "expected_purchases": purchases * ratio,
            "expected_value": spend * ratio,
            "p_alive": base["p_alive"].to_numpy(),
        },
        index=summary.index,
    )


def score(model: ModelName, pred: pd.DataFrame, truth: pd.DataFrame) -> Validation:
    """Per-customer MAE of purchase days, totals against what happened, value rank agreement."""
    p, y = pred["expected_purchases"].to_numpy(), truth["purchases"].to_numpy()
    v, s = pred["expected_value"].to_numpy(), truth["spend"].to_numpy()
    rho = pd.Series(v).corr(pd.Series(s), method="spearman")
    return Validation(
        model=model,
        mae_purchases=round(float(np.abs(p - y).mean()), 4),
        predicted_purchases=round(float(p.sum()), 1),
        actual_purchases=round(float(y.sum()), 1),
        purchases_error_pct=round(_pct(p.sum(), y.sum()), 2),
        predicted_spend=round(float(v.sum()), 1),
        actual_spend=round(float(s.sum()), 1),
        spend_error_pct=round(_pct(v.sum(), s.sum()), 2),
        spearman_value=round(float(rho), 4) if np.isfinite(rho) else float("nan"),
    )


def _pct(predicted: float, actual: float) -> float:
    return float(100.0 * (predicted - actual) / actual) if actual else float("nan")


def validation_days(first: pd.Timestamp, end: pd.Timestamp, horizon_days: int) -> int:
    """The validation window: a third of the history (at least 28 days), at most the horizon."""
    span = (end - first).days
    return int(min(horizon_days, max(28, span // 3)))


def fit_both(
    days: pd.DataFrame, end: pd.Timestamp, window: int, seed: int = 0, extra: Extra = None
) -> tuple:
    """Both models as of ``end`` (the trees learn windows of ``window`` days; None when the
    history is too short for them)."""
    summary = features_at(days, end, extra)
    try:
        trees: Trees | None = fit_trees(days, end, window, seed, extra)
    except TreesUnavailable:
        trees = None
    return summary, fit_btyd(summary), trees


def predict_clv(
    transactions: pd.DataFrame,
    calibration_end: pd.Timestamp,
    horizon_days: int,
    *,
    seed: int = 0,
    progress: Any = None,
    extra: Extra = None,
    fitted: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, ClvResult, dict[str, pd.DataFrame]]:
    """Choose a model on the last window of the calibration data, refit it as of the calibration
    end, predict ``horizon_days`` ahead for every customer seen by then.

    Returns the output rows, the summary (chosen model, validation figures, BG/NBD parameters)
    and both models' predictions (for benchmarks); ``fitted``, when given, receives the
    refitted ``btyd`` and ``trees`` (None without history enough) for the registry."""
    import time

    def note(text: str) -> None:
        if progress is not None:
            progress(text)

    timings: dict[str, float] = {}
    days = purchase_days(transactions.loc[transactions["date"] <= calibration_end])
    window = validation_days(days["date"].min(), calibration_end, horizon_days)
    start = calibration_end - window * DAY
    t0 = time.perf_counter()
    note(f"validation: fitting both models as of {start:%Y-%m-%d}")
    v_summary, v_btyd, v_trees = fit_both(days, start, window, seed, extra)
    truth = outcomes_between(days, v_summary.index, start, window)
    judged = [score("btyd", btyd_predict(v_btyd, v_summary, window), truth)]
    notes = []
    if v_trees is None:
        notes.append(f"lightgbm: under {window + MIN_AGE_DAYS} days of history before "
                     f"{start:%Y-%m-%d}: not judged, BG/NBD predicts")  # fmt: skip
    else:
        judged.append(score("lightgbm", trees_predict(v_trees, v_btyd, v_summary, window), truth))
    timings["validation"] = round(time.perf_counter() - t0, 2)
    chosen: ModelName = min(judged, key=lambda j: (j.mae_purchases, j.model != "btyd")).model
    t0 = time.perf_counter()
    note(f"refit: both models as of {calibration_end:%Y-%m-%d}, {horizon_days} days ahead")
    summary, btyd, trees = fit_both(days, calibration_end, window, seed, extra)
    if fitted is not None:
        fitted.update(btyd=btyd, trees=trees)
    both = {"btyd": btyd_predict(btyd, summary, horizon_days)}
    if trees is not None:
        both["lightgbm"] = trees_predict(trees, btyd, summary, horizon_days)
    if chosen not in both:  # judged on the window, yet no history to learn from at the end
        chosen = "btyd"
    timings["refit"] = round(time.perf_counter() - t0, 2)
    out = both[chosen].reset_index()[list(OUTPUT_COLUMNS)]
    result = ClvResult(
        chosen=chosen,
        calibration_end=f"{calibration_end:%Y-%m-%d}",
        horizon_days=horizon_days,
        validation_start=f"{start:%Y-%m-%d}",
        validation_days=window,
        customers=len(out),
        validation=judged,
        params={k: round(v, 4) for k, v in btyd.params.items()},
        seconds=timings,
        notes=notes,
    )
    return out, result, both
