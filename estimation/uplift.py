"""Per-arm lift against a control (holdout) group: the statistics behind every report line.

Fixed-horizon figures follow the textbook definitions so they match statsmodels and scipy:
Wald interval for a difference of proportions, the classic pooled two-proportion z-test,
Welch's t for means (revenue per customer), the delta method for relative lift. The methods we
own (CUPED, always-valid intervals, Holm's correction) are small and documented where written.
The vectorised cores are in :mod:`estimation.uplift_stats`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from estimation.uplift_stats import (
    holm,
    mean_diff,
    proportion_diff,
    relative_lift,
    sequential_halfwidth,
)


class UpliftError(ValueError):
    """Input that cannot be analysed; the message names the column or arm and the reason."""


class Interval(BaseModel):
    low: float
    high: float


class GroupSummary(BaseModel):
    label: str
    n: int
    mean: float  # conversion rate for 0/1 outcomes, mean per customer otherwise
    sd: float  # sample standard deviation (ddof=1; 0 for a single customer)
    total: float


class CupedResult(BaseModel):
    covariate: str
    theta: float
    lift: float
    ci: Interval
    p_value: float
    variance_reduction: float  # 1 - Var(adjusted lift) / Var(plain lift)


class ArmComparison(BaseModel):
    arm: str
    control: str
    treated: GroupSummary
    baseline: GroupSummary
    test: Literal["two-proportion z", "Welch t"]
    interval: Literal["wald", "agresti-caffo", "welch"]
    lift: float  # absolute: treated mean - control mean
    ci: Interval | None = None
    relative_lift: float | None = None
    relative_ci: Interval | None = None
    statistic: float | None = None  # pooled z (proportions) or Welch t (means)
    wald_z: float | None = None  # lift / Wald standard error (proportions)
    df: float | None = None  # Welch-Satterthwaite degrees of freedom
    p_value: float | None = None
    p_adjusted: float | None = None  # Holm over all arms of the experiment
    significant: bool = False
    sequential_ci: Interval | None = None
    cuped: CupedResult | None = None
    note: str | None = None


class UpliftResult(BaseModel):
    outcome: str
    kind: Literal["binary", "numeric"]
    control: str
    alpha: float
    correction: Literal["holm"] = "holm"
    n: int
    comparisons: list[ArmComparison]


def cuped(y_t, x_t, y_c, x_c, covariate: str, alpha: float = 0.05) -> CupedResult | None:
    """CUPED (Deng, Xu, Kohavi & Walker 2013): y - theta (x - mean x), theta = cov(x, y)/var(x).

    theta comes from both groups pooled, so it is blind to the arm and the lift stays unbiased;
    the interval shrinks by the share of outcome variance the pre-period covariate explains.
    """
    y = np.concatenate([y_t, y_c])
    x = np.concatenate([x_t, x_c])
    if len(y) < 3 or np.var(x) == 0:
        return None
    theta = float(np.cov(x, y)[0, 1] / np.var(x, ddof=1))
    adj_t, adj_c = y_t - theta * (x_t - x.mean()), y_c - theta * (x_c - x.mean())
    plain = mean_diff(y_t.mean(), y_t.var(ddof=1), len(y_t), y_c.mean(), y_c.var(ddof=1), len(y_c))
    adj = mean_diff(
        adj_t.mean(), adj_t.var(ddof=1), len(adj_t),
        adj_c.mean(), adj_c.var(ddof=1), len(adj_c), alpha,
    )  # fmt: skip
    if not (plain["se"] > 0 and adj["se"] > 0):
        return None
    return CupedResult(
        covariate=covariate,
        theta=theta,
        lift=float(adj["diff"]),
        ci=Interval(low=float(adj["low"]), high=float(adj["high"])),
        p_value=float(adj["p"]),
        variance_reduction=float(1 - adj["se"] ** 2 / plain["se"] ** 2),
    )


def summarize(label: str, y: np.ndarray) -> GroupSummary:
    sd = float(np.std(y, ddof=1)) if len(y) > 1 else 0.0
    mean = float(np.mean(y)) if len(y) else 0.0
    return GroupSummary(label=label, n=len(y), mean=mean, sd=sd, total=float(np.sum(y)))


def compare(
    arm: str,
    control: str,
    y_t: np.ndarray,
    y_c: np.ndarray,
    binary: bool,
    alpha: float = 0.05,
    x_t: np.ndarray | None = None,
    x_c: np.ndarray | None = None,
    covariate: str | None = None,
) -> ArmComparison:
    """One arm against the control; degenerate data gets a note and no statistic, never NaN."""
    t, c = summarize(arm, y_t), summarize(control, y_c)
    for g in (t, c):
        if g.n == 0:
            raise UpliftError(f"arm {g.label!r} is empty (0 customers): nothing to compare")
    base = {"arm": arm, "control": control, "treated": t, "baseline": c, "lift": t.mean - c.mean}
    if binary:
        base["test"] = "two-proportion z"
        r = proportion_diff(t.total, t.n, c.total, c.n, alpha)
        base["interval"] = "agresti-caffo" if r["agresti_caffo"] else "wald"
        var_t, var_c = t.mean * (1 - t.mean) / t.n, c.mean * (1 - c.mean) / c.n
    else:
        base["test"], base["interval"] = "Welch t", "welch"
        if min(t.n, c.n) < 2:
            small = t if t.n < 2 else c
            note = f"arm {small.label!r} has {small.n} customer: a variance needs at least 2"
            return ArmComparison(**base, note=note)
        r = mean_diff(t.mean, t.sd**2, t.n, c.mean, c.sd**2, c.n, alpha)
        var_t, var_c = t.sd**2 / t.n, c.sd**2 / c.n
    if not r["se"] > 0:
        what = "no conversions in either group" if binary and t.total + c.total == 0 else (
            f"the outcome is constant ({t.mean:g} for every customer) in both groups"
            if t.mean == c.mean else "the outcome is constant within each group"
        )  # fmt: skip
        return ArmComparison(**base, note=f"{what}: there is no variance to test")
    out = ArmComparison(
        **base,
        ci=Interval(low=float(r["low"]), high=float(r["high"])),
        statistic=float(r["z"] if binary else r["t"]),
        wald_z=float(r["wald_z"]) if binary else None,
        df=None if binary else float(r["df"]),
        p_value=float(r["p"]),
    )
    half = float(sequential_halfwidth(r.get("ci_se", r["se"]), t.n + c.n, alpha))
    out.sequential_ci = Interval(low=out.lift - half, high=out.lift + half)
    if binary:  # a difference of two rates lies in [-1, 1]; early, wide intervals say so
        for ci in (out.ci, out.sequential_ci):
            ci.low, ci.high = max(ci.low, -1.0), min(ci.high, 1.0)
    if c.mean != 0:
        rel = relative_lift(t.mean, var_t, c.mean, var_c, alpha)
        out.relative_lift = float(rel["rel"])
        out.relative_ci = Interval(low=float(rel["low"]), high=float(rel["high"]))
    else:
        out.note = f"control {control!r} has a mean of 0: a relative lift is undefined"
    if x_t is not None and x_c is not None and covariate:
        out.cuped = cuped(y_t, x_t, y_c, x_c, covariate, alpha)
    return out


def analyze(
    frame: pd.DataFrame,
    arm: str,
    outcome: str,
    control: str,
    covariate: str | None = None,
    alpha: float = 0.05,
) -> UpliftResult:
    """Every arm of a clean frame (str arms, float outcome) against ``control``, Holm-adjusted."""
    for col in (arm, outcome, covariate):
        if col and col not in frame.columns:
            raise UpliftError(f"column {col!r} is missing (columns: {', '.join(frame.columns)})")
    labels = sorted(frame[arm].unique().tolist())
    if control not in labels:
        raise UpliftError(f"column {arm!r}: control label {control!r} not found; labels: {labels}")
    if len(labels) < 2:
        raise UpliftError(
            f"column {arm!r} has only one arm ({control!r}): need a control and another arm"
        )
    values = frame[outcome].to_numpy(float)
    binary = bool(np.isin(values, (0.0, 1.0)).all())
    groups = {k: g for k, g in frame.groupby(arm, sort=True)}
    y_c = groups[control][outcome].to_numpy(float)
    x_c = groups[control][covariate].to_numpy(float) if covariate else None
    comparisons = []
    for label in labels:
        if label == control:
            continue
        g = groups[label]
        x_t = g[covariate].to_numpy(float) if covariate else None
        y_t = g[outcome].to_numpy(float)
        comparisons.append(compare(label, control, y_t, y_c, binary, alpha, x_t, x_c, covariate))
    for comp, p in zip(comparisons, holm([c.p_value for c in comparisons]), strict=True):
        comp.p_adjusted = p
        comp.significant = p is not None and p < alpha
    return UpliftResult(
        outcome=outcome,
        kind="binary" if binary else "numeric",
        control=control,
        alpha=alpha,
        n=len(frame),
        comparisons=comparisons,
    )
