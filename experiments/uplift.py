"""Per-arm lift against a control (holdout) group: the statistics behind every report line.

Fixed-horizon figures follow the textbook definitions so they match statsmodels and scipy:
Wald interval for a difference of proportions, the classic pooled two-proportion z-test,
Welch's t for means (revenue per customer), the delta method for relative lift. The methods we
own (CUPED, always-valid intervals, Holm's correction) are small and documented where written.
Vectorised cores take numpy arrays so the coverage benchmark runs the very same code.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy import stats

SEQUENTIAL_TUNING_N = 5000  # sample size at which the always-valid interval is tightest


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


def proportion_diff(
    x_t, n_t, x_c, n_c, alpha: float = 0.05, small: int = 10
) -> dict[str, np.ndarray]:
    """Difference of two proportions: Wald interval (unpooled) and pooled z-test, vectorised.

    When a group has fewer than ``small`` conversions or non-conversions the Wald interval is
    too narrow (zero holdout conversions give it no width from that side), so those rows get the
    Agresti-Caffo interval instead: one success and one failure added to each group (Agresti &
    Caffo 2000), which keeps close to nominal coverage down to a handful of events.
    """
    x_t, n_t, x_c, n_c = (np.asarray(a, dtype=float) for a in (x_t, n_t, x_c, n_c))
    p_t, p_c = x_t / n_t, x_c / n_c
    diff = p_t - p_c
    se = np.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
    pooled = (x_t + x_c) / (n_t + n_c)
    se0 = np.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = diff / se0
        wald_z = diff / se
    a_t, a_c = (x_t + 1) / (n_t + 2), (x_c + 1) / (n_c + 2)
    se_ac = np.sqrt(a_t * (1 - a_t) / (n_t + 2) + a_c * (1 - a_c) / (n_c + 2))
    ac = np.minimum.reduce([x_t, n_t - x_t, x_c, n_c - x_c]) < small
    centre, ci_se = np.where(ac, a_t - a_c, diff), np.where(ac, se_ac, se)
    q = stats.norm.ppf(1 - alpha / 2)
    return {
        "diff": diff, "se": se, "ci_se": ci_se, "agresti_caffo": ac,
        "low": centre - q * ci_se, "high": centre + q * ci_se,
        "z": z, "wald_z": wald_z, "p": 2 * stats.norm.sf(np.abs(z)),
    }  # fmt: skip


def mean_diff(m_t, v_t, n_t, m_c, v_c, n_c, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Welch's unequal-variance t-test and interval for a difference of means (v = ddof=1 var)."""
    m_t, v_t, n_t, m_c, v_c, n_c = (np.asarray(a, float) for a in (m_t, v_t, n_t, m_c, v_c, n_c))
    a, b = v_t / n_t, v_c / n_c
    se = np.sqrt(a + b)
    diff = m_t - m_c
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (a + b) ** 2 / (a**2 / (n_t - 1) + b**2 / (n_c - 1))
        t = diff / se
    q = stats.t.ppf(1 - alpha / 2, df)
    return {
        "diff": diff, "se": se, "df": df, "t": t, "p": 2 * stats.t.sf(np.abs(t), df),
        "low": diff - q * se, "high": diff + q * se,
    }  # fmt: skip


def relative_lift(m_t, var_m_t, m_c, var_m_c, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Relative lift m_t/m_c - 1 with a delta-method interval (var_m_* = variance of each mean).

    Var(m_t/m_c) ~ var_m_t/m_c^2 + m_t^2 var_m_c/m_c^4 (independent groups, first-order Taylor).
    """
    m_t, var_m_t, m_c, var_m_c = (np.asarray(a, float) for a in (m_t, var_m_t, m_c, var_m_c))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = m_t / m_c
        se = np.sqrt(var_m_t / m_c**2 + m_t**2 * var_m_c / m_c**4)
    q = stats.norm.ppf(1 - alpha / 2)
    return {"rel": ratio - 1, "se": se, "low": ratio - 1 - q * se, "high": ratio - 1 + q * se}


def sequential_halfwidth(se, n, alpha: float = 0.05, n_tune: int = SEQUENTIAL_TUNING_N):
    """Half-width of an always-valid 1-alpha interval (normal-mixture confidence sequence).

    Robbins' normal mixture, as in Howard, Ramdas, McAuliffe & Sekhon (2021, Ann. Statist. 49,
    "Time-uniform, nonparametric, nonasymptotic confidence sequences", eq. 14) and its asymptotic
    form in Waudby-Smith et al. (2024, "Time-uniform central limit theory and asymptotic
    confidence sequences"): with per-unit standard deviation s and n units,
        half-width = s * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / alpha ) ),
    and rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / n_tune makes it tightest at n_tune.
    For a difference we take s^2 = n * se^2 (n = both groups), so it is valid under peeking at
    any number of looks, at the price of being wider than the fixed-horizon interval.
    """
    se, n = np.asarray(se, float), np.asarray(n, float)
    rho2 = (-2 * np.log(alpha) + np.log(-2 * np.log(alpha) + 1)) / n_tune
    s = se * np.sqrt(n)
    return s * np.sqrt(2 * (n * rho2 + 1) / (n**2 * rho2) * np.log(np.sqrt(n * rho2 + 1) / alpha))


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (controls the family-wise error over the arms; None kept)."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    order = sorted(idx, key=lambda i: p_values[i])  # type: ignore[arg-type,return-value]
    m, running = len(order), 0.0
    out: list[float | None] = [None] * len(p_values)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


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
