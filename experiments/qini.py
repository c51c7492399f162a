"""Qini curves: does ranking customers by predicted uplift find the ones the offer moves?

Q(k) = conversions among the top-k treated - conversions among the top-k holdout, the latter
scaled by the treated/holdout count ratio in the top k (Radcliffe 2007). A useful model bends
the curve above the straight line of random targeting.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel


class QiniCurve(BaseModel):
    label: str
    fraction: list[float]  # share of customers targeted, best predicted uplift first
    incremental: list[float]  # incremental conversions Q(k)
    random: list[float]  # the same for random targeting
    qini: float  # area between model and random curves, per customer targeted
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
