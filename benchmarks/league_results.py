"""What the bandit league measures, as plain functions of arrays: common-random-number
outcomes and rewards, each policy's value from the truth, the table and the learning curve.

Split from :mod:`benchmarks.league` so the scoring can be checked by hand on tiny arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel

from benchmarks.replay_results import gap, summarise


class PolicyScore(BaseModel):
    """One policy over the seeds: share of the random-to-oracle gap closed and the truth's
    incremental value per treated visit, over the last ``window`` visits of each seed."""

    gap_closed: list[float]
    mean: float
    per_visit: list[float]


class LeagueResult(BaseModel):
    nextbest: str  # the key of Nextbest's served policy in ``policies``
    policies: dict[str, PolicyScore]
    visits: int
    seeds: list[int]
    window: int
    curve_visits: list[int]  # the end of each checkpoint's segment of visits
    curve: dict[str, list[float]]  # gap closed per segment, mean over seeds, per policy
    seconds: dict[str, float]  # the served replays and the peers, summed over seeds
    plot: str | None
    logged_matches_policy: list[float] = []  # per seed: share of the served decisions whose
    # ledger probabilities equal the bandit's distribution (the served figure is exact)


def bought(draws: np.ndarray, p1: np.ndarray, p0: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """Which products each visit buys in its window (visits x products), given the offer shown
    (an index per visit): the shown one at its treated rate, the others untreated, against the
    visit's fixed uniform ``draws``. Common random numbers: two policies showing the same offer
    to the same visit get the same purchases, so their difference is their choices' alone."""
    rows = np.arange(len(shown))
    p = p0.copy()
    p[rows, shown] = p1[rows, shown]
    return draws < p


def rewards(
    purchases: np.ndarray,
    shown: np.ndarray,
    value: np.ndarray,
    cost: np.ndarray,
    kind: Literal["spend", "conversion"],
) -> np.ndarray:
    """The reward the served learner counts (``training.bandit_ledger.logged_examples``):
    ``spend`` every purchase's value minus the shown offer's cost when it converted,
    ``conversion`` the shown offer's margin when it converted."""
    rows = np.arange(len(shown))
    converted = purchases[rows, shown]
    margin = converted * (value[shown] - cost[shown])
    if kind == "conversion":
        return margin
    return purchases @ value - converted * cost[shown]


def oracle_probs(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """All mass on the truly best allowed offer of each visit."""
    probs = np.zeros_like(values)
    probs[np.arange(len(values)), np.where(allowed, values, -np.inf).argmax(axis=1)] = 1.0
    return probs


def best_single_probs(values: np.ndarray, allowed: np.ndarray, fallback: int) -> np.ndarray:
    """The one offer worth most over all these visits (in hindsight, from the truth) shown
    wherever allowed, ``fallback`` (doing nothing) elsewhere: :func:`summarise`'s yardstick."""
    best = int(np.where(allowed, values, 0.0).mean(axis=0).argmax())
    probs = np.zeros_like(values)
    rows = np.arange(len(values))
    probs[rows, np.where(allowed[:, best], best, fallback)] = 1.0
    return probs


def score(values: np.ndarray, allowed: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(value per visit, gap closed) of a policy's probabilities on these visits."""
    policy, random, _, oracle, _ = summarise(values, allowed, probs)
    return policy, gap(policy, random, oracle)


def table(
    per_seed: list[dict[str, tuple[float, float]]],
) -> dict[str, PolicyScore]:
    """Per policy: gap closed and value per visit of every seed, and the mean gap."""
    names = list(per_seed[0])
    return {
        n: PolicyScore(
            gap_closed=[s[n][1] for s in per_seed],
            mean=float(np.mean([s[n][1] for s in per_seed])),
            per_visit=[s[n][0] for s in per_seed],
        )
        for n in names
    }


def plot_league(
    curve_visits: list[int], curve: dict[str, list[float]], nextbest: str, path: Path, title: str
) -> Path:
    """Gap closed per segment of visits, one line per policy (mean over seeds), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles, colours = ["-", "--", "-.", ":"], plt.get_cmap("tab20").colors
    # best first in the legend: the final segment's figure
    for k, (name, ys) in enumerate(sorted(curve.items(), key=lambda kv: -kv[1][-1])):
        if name == nextbest:
            ax.plot(curve_visits, ys, "k-o", lw=2.5, ms=4, label=f"{name} (Nextbest, served)")
        else:
            ax.plot(curve_visits, ys, styles[k % 4], color=colours[(2 * k) % 20 + k // 10 % 2],
                    lw=1.4, label=name)  # fmt: skip
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("visits")
    ax.set_ylabel("share of the random-to-oracle gap closed (truth)")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
