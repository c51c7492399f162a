"""Off-policy evaluation: what a candidate policy would have earned on logged decisions.

Every estimator takes numpy arrays row by row (one row per logged decision) and returns an
:class:`Estimate` with a 95% normal interval. IPS and SNIPS match VW's ``vw-estimators``; the
interval of IPS is its ``gaussian.Interval``. ESS (Kish) tells how many logged rows the
importance weights are really worth: a small ESS means the logs barely support the policy.
:func:`snips_advantage` compares two policies on the same rows, with the interval of their
difference (what a promotion gate needs). Which policy, on which logs: ``experiments.ope``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


class Estimate(BaseModel):
    """One estimate of a policy's value per decision, with its interval."""

    estimator: Literal["ips", "snips", "dm", "dr", "snips_advantage"]
    value: float
    ci_low: float
    ci_high: float
    n: int
    ess: float | None = None

    def __float__(self) -> float:
        return self.value


def _array(name: str, x: object) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty: no logged rows to evaluate")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(f"{name} contains NaN or infinity at row {int(bad[0])}")
    return a


def _check(**arrays: object) -> dict[str, np.ndarray]:
    """Convert and validate the inputs; errors name the array, the row and the reason."""
    out = {name: _array(name, x) for name, x in arrays.items()}
    shapes = {name: a.shape for name, a in out.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ValueError(f"shapes differ: {listed}")
    if "pscore" in out:
        bad = np.flatnonzero((out["pscore"] <= 0) | (out["pscore"] > 1))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"pscore must be in (0, 1], got {out['pscore'][i]:g} at row {i}")
    for name in ("target_prob", "baseline_prob"):
        bad = np.flatnonzero((out[name] < 0) | (out[name] > 1)) if name in out else []
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{name} must be in [0, 1], got {out[name][i]:g} at row {i}")
    return out


def _mean_ci(
    estimator: str, terms: np.ndarray, value: float | None = None, ess: float | None = None
) -> Estimate:
    """Normal interval from per-row terms (sample sd with n-1, as vw-estimators does)."""
    n = terms.size
    v = float(terms.mean()) if value is None else value
    half = Z95 * float(terms.std(ddof=1)) / np.sqrt(n) if n > 1 else float("inf")
    return Estimate(estimator=estimator, value=v, ci_low=v - half, ci_high=v + half, n=n, ess=ess)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's ESS, (sum w)^2 / sum w^2; 0 when the target never picks a logged action."""
    sq = float(np.square(weights).sum())
    return float(weights.sum() ** 2 / sq) if sq > 0 else 0.0


def ips(reward: object, pscore: object, target_prob: object) -> Estimate:
    """Inverse propensity scoring: unbiased when pscore is the true logging probability."""
    a = _check(reward=reward, pscore=pscore, target_prob=target_prob)
    w = a["target_prob"] / a["pscore"]
    return _mean_ci("ips", a["reward"] * w, ess=effective_sample_size(w))


def snips(reward: object, pscore: object, target_prob: object) -> Estimate:
    """Self-normalised IPS: divides by the weights' sum, trading a small bias for less variance.

    The interval is the delta-method one (influence w * (r - value) / mean(w)).
    """
    a = _check(reward=reward, pscore=pscore, target_prob=target_prob)
    w = a["target_prob"] / a["pscore"]
    value, influence = _snips_influence(a["reward"], w, "target_prob")
    return _mean_ci("snips", influence, value=value, ess=effective_sample_size(w))


def _snips_influence(reward: np.ndarray, w: np.ndarray, name: str) -> tuple[float, np.ndarray]:
    """SNIPS value and its per-row influence (delta method), shared by the one-policy and the
    paired estimates so both have the same interval."""
    if w.sum() == 0:
        raise ValueError(f"{name} is 0 on every logged row: SNIPS is undefined")
    value = float((reward * w).sum() / w.sum())
    return value, w * (reward - value) / w.mean()


def snips_advantage(
    reward: object, pscore: object, target_prob: object, baseline_prob: object
) -> Estimate:
    """The target policy's SNIPS value minus the baseline's, on the SAME logged rows, with the
    interval of the difference itself.

    Both estimates use the same rewards, so their errors are correlated; two separate
    intervals overlap even when one policy is surely better, and ``value_a >= value_b`` on two
    point estimates promotes on noise. The paired interval comes from the per-row influence
    difference, ``infl_target - infl_baseline`` (each ``w * (r - value) / mean(w)``), whose
    sample sd gives the normal interval: what a promotion gate needs (promote only when
    ``ci_low`` is above the margin).
    """
    a = _check(reward=reward, pscore=pscore, target_prob=target_prob, baseline_prob=baseline_prob)
    w_target = a["target_prob"] / a["pscore"]
    w_base = a["baseline_prob"] / a["pscore"]
    v_target, infl_target = _snips_influence(a["reward"], w_target, "target_prob")
    v_base, infl_base = _snips_influence(a["reward"], w_base, "baseline_prob")
    return _mean_ci(
        "snips_advantage",
        infl_target - infl_base,
        value=v_target - v_base,
        ess=effective_sample_size(w_target),
    )


def dm(v_hat: object) -> Estimate:
    """Direct method: the reward model's value of the policy, averaged over logged contexts.

    The interval covers context sampling only, not the reward model's bias.
    """
    a = _check(v_hat=v_hat)
    return _mean_ci("dm", a["v_hat"])


def dr(
    reward: object, pscore: object, target_prob: object, q_hat_logged: object, v_hat: object
) -> Estimate:
    """Doubly robust: DM plus an IPS correction of the model's error on the logged action."""
    a = _check(
        reward=reward,
        pscore=pscore,
        target_prob=target_prob,
        q_hat_logged=q_hat_logged,
        v_hat=v_hat,
    )
    w = a["target_prob"] / a["pscore"]
    terms = a["v_hat"] + w * (a["reward"] - a["q_hat_logged"])
    return _mean_ci("dr", terms, ess=effective_sample_size(w))
