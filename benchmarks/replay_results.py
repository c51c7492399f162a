"""What a replay reports: values per visit from the truth, the learning curve and its plot.

Split from :mod:`benchmarks.replay` so the measures (policy, uniform random, best single
offer, oracle, share of the gap closed) are plain functions of arrays, testable by hand
without driving a pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel


class Checkpoint(BaseModel):
    """Values per treated visit over the window of visits ending at ``visits``."""

    visits: int
    policy: float
    random: float
    best_single: float
    oracle: float
    gap_closed: float


class ReplayResult(BaseModel):
    visits: int
    treated_visits: int
    exploration: str
    outcomes: str
    retrain_every: int
    policy: float  # over the last ``window`` treated visits
    random: float
    best_single: float
    best_single_offer: str
    oracle: float
    gap_closed: float
    window: int
    curve: list[Checkpoint]
    retrains: list[dict[str, Any]]
    seconds: float
    visits_per_second: float
    plot: str | None
    model_versions: dict[str, str]  # the models the pipeline scored with at the end
    logged_matches_policy: float  # share of treated decisions whose logged probabilities
    # equal the bandit's distribution for the same visit
    greedy_gap_closed: float | None = None  # the same with exploration off: always the
    # policy's most probable offer (``greedy_value``); the difference is what exploring costs
    linear_ceiling: float | None = None  # gap closed by the bandit's model class given the
    # truth itself (see ``linear_ceiling``), over the same window
    stage_seconds: dict[str, float] = {}  # where the time went: the pipeline's stages
    # (``serving.stages``) and ``decide`` (all of them), then the replay's own parts: the
    # learner's ticks, the outcome reports, the retrains


@dataclass
class ReplayTrace:
    """What one replay through the served pipeline saw, per visit, for policies replayed on
    the same visits (:mod:`benchmarks.league`): the truth (``p1``, ``p0``: visits x offers
    conversion rates treated and untreated; ``values``: incremental values), what the pipeline
    allowed and the served policy's probabilities, which visits were treated, each visit's
    window of world time (``slots``: rewards are learned once their window has closed), the
    decision id of each treated visit and the replay's ledger (``logs``: the features, context
    and model scores each decision saw). Empty until :meth:`fill`."""

    offer_ids: list[str] = field(default_factory=list)
    value: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cost: np.ndarray = field(default_factory=lambda: np.zeros(0))
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    p1: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    p0: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    allowed: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    treated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    slots: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    decision_ids: list[str | None] = field(default_factory=list)
    logs: Any = None  # pandas.DataFrame of the replay's decisions (``Ledger.logs``)
    scale: float = 1.0  # the reward scale the served bandit learned with
    seconds: float = 0.0  # the served replay's wall time

    def fill(self, **parts: Any) -> None:
        for name, value in parts.items():
            if not hasattr(self, name):
                raise AttributeError(f"ReplayTrace has no field {name!r}")
            setattr(self, name, value)


def gap(policy: float, random: float, oracle: float) -> float:
    """Share of the random-to-oracle gap closed (1 = oracle, 0 = no better than random)."""
    return (policy - random) / (oracle - random) if oracle > random else float("nan")


def summarise(
    values: np.ndarray, allowed: np.ndarray, policy_probs: np.ndarray
) -> tuple[float, float, float, float, int]:
    """Per-visit value of the policy, uniform random, the best single offer and the oracle.

    ``values`` (visits x offers) holds each offer's true incremental value, ``allowed`` which
    offers the pipeline allowed, ``policy_probs`` the logged probabilities. The best single
    offer shows one offer to everyone it is allowed for, and nothing (value 0) otherwise.
    """
    v, a, p = values, allowed, policy_probs
    k = a.sum(axis=1)
    policy = float((p * v).sum(axis=1).mean())
    random = float((np.where(a, v, 0).sum(axis=1) / k).mean())
    oracle = float(np.where(a, v, -np.inf).max(axis=1).mean())
    single = np.where(a, v, 0.0).mean(axis=0)
    best = int(np.argmax(single))
    return policy, random, float(single[best]), oracle, best


def greedy_value(values: np.ndarray, policy_probs: np.ndarray) -> float:
    """Per-visit value of playing the policy's most probable offer every time: the policy
    without its exploration. (Probabilities are zero outside the allowed set.)"""
    pick = policy_probs.argmax(axis=1)
    return float(values[np.arange(len(values)), pick].mean())


def linear_ceiling(
    features: list[dict[str, Any]],
    values: np.ndarray,
    allowed: np.ndarray,
    window: int,
) -> float:
    """Gap closed over the last ``window`` rows by a per-offer linear model of the logged
    features (the bandit's model class: features crossed with the offer) fitted on the rows
    before them with every offer's true incremental value: full information and no noise.

    A yardstick for the bandit, which sees one noisy reward of one offer per visit: the
    distance between the two is what learning from bandit feedback costs, and the distance
    from this to 1 is what the features cannot tell. ``features``: one dict per row, numbers
    and strings (strings are one-hot)."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(features)
    if not 0 < window < n:
        raise ValueError(f"window must be in (0, {n}), got {window}")
    rows = [{k: v for k, v in f.items() if isinstance(v, int | float | str)} for f in features]
    train, test = slice(0, n - window), slice(n - window, n)
    pred = np.empty((window, values.shape[1]))
    for j in range(values.shape[1]):
        model = make_pipeline(DictVectorizer(), StandardScaler(with_mean=False), Ridge(1.0))
        pred[:, j] = model.fit(rows[train], values[train, j]).predict(rows[test])
    a, v = allowed[test], values[test]
    pick = np.where(a, pred, -np.inf).argmax(axis=1)
    probs = np.zeros_like(v)
    probs[np.arange(window), pick] = 1.0
    policy, random, _, oracle, _ = summarise(v, a, probs)
    return gap(policy, random, oracle)


def plot_curve(curve: list[Checkpoint], path: Path, title: str) -> Path:
    """Learning curve (value per visit vs visits) as a PNG, without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [c.visits for c in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [c.oracle for c in curve], "k--", label="oracle")
    ax.plot(x, [c.policy for c in curve], "C0-o", ms=3, label="learned policy (bandit)")
    ax.plot(x, [c.best_single for c in curve], "C2:", label="best single offer")
    ax.plot(x, [c.random for c in curve], "C3-.", label="uniform random")
    ax.set_xlabel("visits")
    ax.set_ylabel("incremental value per visit (truth)")
    ax.set_title(title)
    ax.legend(loc="best", framealpha=0.9)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
