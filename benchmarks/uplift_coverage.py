"""Do our intervals cover the truth? Many simulated experiments with known uplift.

A third of the experiments are A/A tests (no true effect): the share whose p-value falls under
0.05 is the false-positive rate. For all of them, the share of 95% intervals that contain the
true lift is the coverage (goal 0.93-0.97). Peeking is simulated too: ten looks per experiment,
where the fixed-horizon interval loses coverage and the always-valid one must not.
The same vectorised functions as the report run here (estimation/uplift_stats.py).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from estimation.uplift_stats import mean_diff, proportion_diff, relative_lift, sequential_halfwidth

LOOKS = 10


def _experiments(rng: np.random.Generator, k: int) -> dict[str, np.ndarray]:
    """Sizes 500-5000 per arm (holdouts of 10-50%), base rates 3-40%, a third A/A."""
    n_total = rng.integers(1_000, 10_000, k)
    share = rng.uniform(0.1, 0.5, k)
    n_c = np.maximum((n_total * share).astype(int), 500)
    n_t = np.maximum(n_total - n_c, 500)
    p_c = rng.uniform(0.03, 0.4, k)
    aa = rng.random(k) < 1 / 3
    p_t = np.where(aa, p_c, np.clip(p_c * (1 + rng.uniform(-0.3, 0.5, k)), 0.005, 0.95))
    return {"n_t": n_t, "n_c": n_c, "p_t": p_t, "p_c": p_c, "aa": aa}


def proportions(k: int, rng: np.random.Generator, alpha: float = 0.05) -> dict[str, float]:
    """Coverage, false positives and peeking for conversion-rate experiments."""
    e = _experiments(rng, k)
    # outcomes arrive in LOOKS equal batches; the marketer looks after each one
    x_t = rng.binomial((e["n_t"][:, None] / LOOKS).astype(int), e["p_t"][:, None], (k, LOOKS))
    x_c = rng.binomial((e["n_c"][:, None] / LOOKS).astype(int), e["p_c"][:, None], (k, LOOKS))
    n_t = (e["n_t"][:, None] / LOOKS).astype(int) * np.arange(1, LOOKS + 1)
    n_c = (e["n_c"][:, None] / LOOKS).astype(int) * np.arange(1, LOOKS + 1)
    r = proportion_diff(x_t.cumsum(1), n_t, x_c.cumsum(1), n_c, alpha)
    truth = (e["p_t"] - e["p_c"])[:, None]
    covered = (r["low"] <= truth) & (truth <= r["high"])
    half = sequential_halfwidth(r["se"], n_t + n_c, alpha)
    seq_covered = (r["diff"] - half <= truth) & (truth <= r["diff"] + half)
    final = {key: v[:, -1] for key, v in r.items()}
    pt, pc = x_t.sum(1) / n_t[:, -1], x_c.sum(1) / n_c[:, -1]
    rel = relative_lift(pt, pt * (1 - pt) / n_t[:, -1], pc, pc * (1 - pc) / n_c[:, -1], alpha)
    rel_truth = e["p_t"] / e["p_c"] - 1
    aa = e["aa"]
    return {
        "experiments": k,
        "aa_tests": int(aa.sum()),
        "coverage": float(covered[:, -1].mean()),
        "false_positive_rate": float((final["p"][aa] < alpha).mean()),
        "power": float((final["p"][~aa] < alpha).mean()),
        "relative_coverage": float(((rel["low"] <= rel_truth) & (rel_truth <= rel["high"])).mean()),
        "peeking_fixed_coverage": float(covered.all(1).mean()),
        # A/A: the truth is 0, so "missed at some look" is "declared a winner at some look"
        "peeking_fixed_false_positive_rate": float((~covered[aa]).any(1).mean()),
        "peeking_sequential_false_positive_rate": float((~seq_covered[aa]).any(1).mean()),
        "peeking_sequential_coverage": float(seq_covered.all(1).mean()),
    }


def revenue(k: int, rng: np.random.Generator, alpha: float = 0.05) -> dict[str, float]:
    """Welch coverage on skewed revenue per customer (most spend nothing, a few spend a lot)."""
    hits, aa_hits, aa_n = 0, 0, 0
    for _ in range(k):
        n_t, n_c = rng.integers(500, 3000, 2)
        aa = rng.random() < 1 / 3
        p_c, scale = rng.uniform(0.05, 0.3), rng.uniform(20, 80)
        p_t = p_c if aa else p_c * rng.uniform(0.8, 1.4)
        y_t = (rng.random(n_t) < p_t) * rng.lognormal(np.log(scale), 0.8, n_t)
        y_c = (rng.random(n_c) < p_c) * rng.lognormal(np.log(scale), 0.8, n_c)
        truth = (p_t - p_c) * scale * np.exp(0.8**2 / 2)
        r = mean_diff(y_t.mean(), y_t.var(ddof=1), n_t, y_c.mean(), y_c.var(ddof=1), n_c, alpha)
        hits += bool(r["low"] <= truth <= r["high"])
        if aa:
            aa_n += 1
            aa_hits += bool(r["p"] < alpha)
    return {"experiments": k, "coverage": hits / k, "false_positive_rate": aa_hits / max(aa_n, 1)}


def run(experiments: int = 20_000, seed: int = 0) -> dict[str, Any]:
    """All figures, with the goals they are held to."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    conv = proportions(experiments, rng)
    money = revenue(min(max(experiments // 10, 100), 1000), rng)
    goals = {
        "coverage_in_0.93_0.97": 0.93 <= conv["coverage"] <= 0.97,
        "false_positives_at_most_0.06": conv["false_positive_rate"] <= 0.06,
        "sequential_coverage_at_least_0.95_under_peeking": conv["peeking_sequential_coverage"]
        >= 0.95,
        "revenue_coverage_in_0.93_0.97": 0.93 <= money["coverage"] <= 0.97,
    }
    return {"conversion": conv, "revenue": money, "goals": goals, "met": all(goals.values()),
            "seconds": round(time.perf_counter() - start, 2), "seed": seed}  # fmt: skip


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
