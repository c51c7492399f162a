"""Model quality: classification metrics, uplift curves (Qini/AUUC) and the plots MLflow keeps.

The same functions judge a model at training time and at promotion time, so the gate compares
champion and challenger with exactly the numbers the runs logged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def top_decile_lift(y: np.ndarray, p: np.ndarray) -> float:
    """Positive rate among the 10% highest scores over the overall rate."""
    k = max(len(p) // 10, 1)
    top = np.argsort(-p, kind="stable")[:k]
    return float(y[top].mean() / y.mean()) if y.mean() > 0 else float("nan")


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, PR-AUC, Brier and top-decile lift (the churn model's logged metrics)."""
    return {
        "auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "top_decile_lift": top_decile_lift(y, p),
        "positive_rate": float(y.mean()),
    }


def qini_curve(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cumulative incremental conversions when targeting by predicted uplift (Radcliffe).

    Returns (fraction targeted, qini gain, uplift-curve gain); gains are in conversions per
    customer of the whole population, so curves of different sizes compare.
    """
    order = np.argsort(-uplift, kind="stable")
    y, t = y[order].astype(float), treated[order].astype(float)
    n_t, n_c = np.cumsum(t), np.cumsum(1 - t)
    y_t, y_c = np.cumsum(y * t), np.cumsum(y * (1 - t))
    with np.errstate(divide="ignore", invalid="ignore"):
        qini = y_t - np.where(n_c > 0, y_c * n_t / n_c, 0.0)
        uplift_gain = (
            np.where(n_t > 0, y_t / n_t, 0.0) - np.where(n_c > 0, y_c / n_c, 0.0)
        ) * np.arange(1, len(y) + 1)
    frac = np.arange(1, len(y) + 1) / len(y)
    return frac, qini / len(y), uplift_gain / len(y)


def uplift_metrics(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray) -> dict[str, float]:
    """Qini coefficient and AUUC: area between the model's curve and random targeting."""
    frac, qini, gain = qini_curve(y, treated, uplift)
    return {
        "qini": float(np.trapezoid(qini, frac) - qini[-1] / 2),
        "auuc": float(np.trapezoid(gain, frac) - gain[-1] / 2),
        "ate": float(y[treated == 1].mean() - y[treated == 0].mean()),
    }


def paired_bootstrap(
    metric: Callable[[np.ndarray], float],
    n: int,
    draws: int = 400,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of a statistic of row indices, resampling the rows with
    replacement. ``metric(idx)`` must compute the challenger's and the champion's metric on the
    SAME resampled rows and return their difference: the interval of the advantage itself,
    narrower than two separate intervals whenever the two models err on the same rows. Draws
    where the metric is undefined (one class only) are left out."""
    rng = np.random.default_rng(seed)
    values = np.array([metric(rng.integers(0, n, n)) for _ in range(draws)], dtype=float)
    tail = (1 - level) / 2
    lo, hi = np.nanquantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def _figure() -> tuple[Figure, object]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=90)
    return fig, ax


def calibration_plot(y: np.ndarray, p: np.ndarray) -> Figure:
    """Observed rate per predicted-probability decile against the diagonal."""
    fig, ax = _figure()
    bins = np.quantile(p, np.linspace(0, 1, 11))
    idx = np.clip(np.searchsorted(bins, p, side="right") - 1, 0, 9)
    pred = [p[idx == i].mean() for i in range(10) if (idx == i).any()]
    obs = [y[idx == i].mean() for i in range(10) if (idx == i).any()]
    ax.plot([0, max(pred + obs)], [0, max(pred + obs)], "k--", lw=1)
    ax.plot(pred, obs, "o-")
    ax.set(xlabel="predicted probability", ylabel="observed rate", title="calibration")
    return fig


def gains_plot(y: np.ndarray, p: np.ndarray) -> Figure:
    """Cumulative share of positives captured against share of customers contacted."""
    fig, ax = _figure()
    order = np.argsort(-p)
    captured = np.cumsum(y[order]) / max(y.sum(), 1)
    frac = np.arange(1, len(y) + 1) / len(y)
    ax.plot(frac, captured, label="model")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="random")
    ax.set(xlabel="share targeted", ylabel="share of churners", title="cumulative gains")
    ax.legend()
    return fig


def importance_plot(names: list[str], gains: np.ndarray, top: int = 20) -> Figure:
    """Total split gain per feature (LightGBM importance_type='gain')."""
    fig, ax = _figure()
    order = np.argsort(gains)[-top:]
    ax.barh([names[i] for i in order], gains[order])
    ax.set(xlabel="total gain", title="feature importance")
    fig.tight_layout()
    return fig


def qini_plot(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray) -> Figure:
    """The Qini curve against random targeting."""
    fig, ax = _figure()
    frac, qini, _ = qini_curve(y, treated, uplift)
    ax.plot(frac, qini, label="model")
    ax.plot([0, 1], [0, qini[-1]], "k--", lw=1, label="random")
    ax.set(xlabel="share targeted", ylabel="incremental conversions / customer", title="Qini")
    ax.legend()
    return fig
