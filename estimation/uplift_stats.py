"""The vectorised cores of the uplift statistics: numpy arrays in, numpy arrays out, so a
report line and the coverage benchmark (``nextbest bench uplift``) run the very same code.

Split from :mod:`estimation.uplift`, which turns exposures into the report's comparisons.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

SEQUENTIAL_TUNING_N = 5000  # sample size at which the always-valid interval is tightest


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
