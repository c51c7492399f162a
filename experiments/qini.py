"""Qini curves: does ranking customers by predicted uplift find the ones the offer moves?

Q(k) = conversions among the top-k treated - conversions among the top-k holdout, the latter
scaled by the treated/holdout count ratio in the top k (Radcliffe 2007). A useful model bends
the curve above the straight line of random targeting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel


class QiniCurve(BaseModel):
    label: str
    fraction: list[float]  # share of customers targeted, best predicted uplift first
    incremental: list[float]  # incremental conversions Q(k)
    random: list[float]  # the same for random targeting
    qini: float  # area between the model and random curves: incremental outcomes x share targeted
    n: int


def qini_curve(
    score: np.ndarray, treated: np.ndarray, outcome: np.ndarray, label: str, points: int = 101
) -> QiniCurve:
    """The Qini curve of ``score`` on a randomised sample (treated 0/1, outcome 0/1 or amount)."""
    score, treated, outcome = (np.asarray(a, float) for a in (score, treated, outcome))
    order = np.argsort(-score, kind="stable")
    t, y = treated[order], outcome[order]
    n_t, n_c = np.cumsum(t), np.cumsum(1 - t)
    y_t, y_c = np.cumsum(y * t), np.cumsum(y * (1 - t))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(n_c > 0, y_t - y_c * n_t / n_c, y_t)
    q = np.concatenate([[0.0], q])
    n = len(score)
    idx = np.unique(np.linspace(0, n, points).round().astype(int))
    frac = idx / n
    rand = frac * q[-1]
    area = float(np.trapezoid(q[idx] - rand, frac)) if n else 0.0
    return QiniCurve(
        label=label,
        fraction=frac.tolist(),
        incremental=q[idx].tolist(),
        random=rand.tolist(),
        qini=area,
        n=n,
    )


def cell_uplift_scores(
    units: pd.DataFrame, cells: list[str], folds: int = 2, prior: float = 50.0, seed: int = 0
) -> np.ndarray:
    """Cross-fitted uplift per cell (e.g. offer x channel x segment) when no model is available.

    Each customer is scored with treated-minus-holdout conversion of their cell measured on the
    other folds, shrunk toward the overall lift by ``prior`` pseudo-customers, so the curve
    never judges a score on the data that made it.
    """
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, folds, len(units))
    treated = (units["arm"] == "treatment").to_numpy()
    y = units["converted"].to_numpy(float)
    key = units[cells].astype(str).agg("|".join, axis=1).to_numpy()
    scores = np.zeros(len(units))
    for f in range(folds):
        train = fold != f
        frame = pd.DataFrame({"key": key[train], "t": treated[train], "y": y[train]})
        overall = frame.groupby("t")["y"].mean().reindex([True, False]).fillna(0.0)
        base = overall[True] - overall[False]
        stats = frame.groupby(["key", "t"])["y"].agg(["sum", "count"]).unstack("t", fill_value=0)
        rate = {}
        for arm in (True, False):
            s = stats.get(("sum", arm), pd.Series(0.0, index=stats.index))
            c = stats.get(("count", arm), pd.Series(0.0, index=stats.index))
            rate[arm] = (s + prior * overall[arm]) / (c + prior)
        cell_score = (rate[True] - rate[False]).to_dict()
        scores[~train] = [cell_score.get(k, base) for k in key[~train]]
    return scores


def report_curves(units: pd.DataFrame, settings: Any) -> tuple[list[QiniCurve], str]:
    """The uplift report's Qini curves: the promoted uplift model's against the cell averages
    it has to beat, or cross-fitted cell uplift alone without a model."""
    treated = (units["arm"] == "treatment").to_numpy(float)
    y = units["converted"].to_numpy(float)
    model, mask, source = model_uplift(units, settings)
    cells = ["experiment", "offer_id", "channel", "segment"]
    scores = cell_uplift_scores(units.fillna({c: "?" for c in cells}), cells)
    if model is not None:  # the cell averages are the bar a model has to clear
        return [
            qini_curve(model, treated[mask], y[mask], "uplift model"),
            qini_curve(scores[mask], treated[mask], y[mask], "cell-average baseline"),
        ], source
    source = (source + " " if source else "") + (
        "No uplift model predictions are available, so these curves rank customers by a "
        "cross-fitted cell-average uplift (experiment x offer x channel x segment, 2 folds)."
    )
    curves = [qini_curve(scores, treated, y, "all experiments")]
    for exp in units["experiment"].value_counts().index[:3]:
        m = (units["experiment"] == exp).to_numpy()
        curves.append(qini_curve(scores[m], treated[m], y[m], str(exp)))
    return curves, source


def model_uplift(units: pd.DataFrame, settings: Any) -> tuple[np.ndarray | None, Any, str]:
    """The promoted propensity model's uplift (training/propensity.py, via the BentoML store)
    on the latest quarter of exposures with an offer (its validation window, so the curve is
    out of sample), with point-in-time features from the feature store."""
    try:
        from training.datasets import point_in_time
        from training.scoring import load_bundle

        bundle = load_bundle(settings)
    except Exception as exc:  # noqa: BLE001 - no training stack: say so, fall back
        return None, None, f"Uplift model not loadable ({type(exc).__name__})."
    if bundle is None or bundle.propensity is None:
        return None, None, ""
    mask = (units["offer_id"].notna() & units["ts"].ge(units["ts"].quantile(0.75))).to_numpy()
    entities = pd.DataFrame({"customer_id": units.loc[mask, "customer_id"].to_numpy(),
                             "event_timestamp": units.loc[mask, "ts"].to_numpy(),
                             "offer_id": units.loc[mask, "offer_id"].to_numpy(),
                             "channel": units.loc[mask, "channel"].to_numpy()})  # fmt: skip
    try:
        scorer = bundle.propensity
        frame = point_in_time(settings, scorer.spec.feature_service, entities)
        scores = scorer.predict_frame(frame)["uplift"].to_numpy(float)
    except Exception as exc:  # noqa: BLE001 - e.g. features not built for these customers
        return None, None, f"The uplift model could not score these exposures ({exc})."
    version = bundle.versions.get("propensity", "?")
    return (
        scores,
        mask,
        (
            f"Customers ranked by the promoted uplift model (propensity {version}), on the latest "
            f"quarter of exposures ({int(mask.sum())} customers, its validation window)."
        ),
    )
