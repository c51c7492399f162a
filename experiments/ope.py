"""Off-policy evaluation: what a candidate policy would have earned on logged decisions.

Every estimator takes numpy arrays row by row (one row per logged decision) and returns an
:class:`Estimate` with a 95% normal interval. IPS and SNIPS match VW's ``vw-estimators``; the
interval of IPS is its ``gaussian.Interval``. ESS (Kish) tells how many logged rows the
importance weights are really worth: a small ESS means the logs barely support the policy.
:func:`snips_advantage` compares two policies on the same rows, with the interval of their
difference (what a promotion gate needs). The estimators above the named-policy section are
pure numpy/scipy; the section below it reads the ledger and the bandit.
"""

from __future__ import annotations

from typing import Any, Literal

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


# --- a named policy on the ledger's recent logs (``nextbest ope``) -------------------------

MIN_ESS = 100.0
MAX_UNSUPPORTED = 0.05


class FixedPolicy:
    """A policy without a model: ``uniform`` over the allowed offers, or always one offer
    (uniform over the allowed set when that offer is not allowed)."""

    def __init__(self, offer_id: str | None = None) -> None:
        self.offer_id = offer_id
        self.version = f"offer:{offer_id}" if offer_id else "uniform"

    def distribution(
        self, features: Any, channel: str, context: Any, allowed: list[str], scores: Any = None
    ) -> dict:
        """The policy's distribution; ``scores`` (the models' values) do not move a fixed one."""
        if self.offer_id in allowed:
            return {o: float(o == self.offer_id) for o in allowed}
        return {o: 1.0 / len(allowed) for o in allowed}


def _named_policy(settings: Any, name: str, examples: Any) -> Any:
    from training.bandit_registry import load_bandit, load_registered

    if name == "uniform":
        return FixedPolicy()
    if name.startswith("offer:"):
        return FixedPolicy(name.removeprefix("offer:"))
    if name == "best_single":  # chosen on logs it is not scored on: see evaluate_policy
        return FixedPolicy(best_single_offer(examples))
    if name in ("champion", "challenger"):
        policy = load_bandit(settings) if name == "champion" else load_registered(settings, name)
        if policy is None:
            raise ValueError(f"policy: no bandit {name} is registered yet")
        return policy
    raise ValueError(
        f"policy: {name!r} is not one of champion, challenger, uniform, best_single, offer:ID"
    )


def best_single_offer(examples: Any) -> str:
    """The single offer whose IPS value on ``examples`` is highest. Its value on these same
    logs is biased up (the maximum of noisy estimates): score it on other logs."""
    offers = sorted({o for a in examples["allowed"] for o in a})
    r, p = examples["reward"].to_numpy(float), examples["propensity"].to_numpy(float)
    values = {o: ips(r, p, _target(FixedPolicy(o), examples)).value for o in offers}
    return max(values, key=values.__getitem__)


def selection_split(examples: Any) -> tuple[Any, Any]:
    """The older half of time-ordered logs (to choose a baseline on) and the newer half (to
    score it on): disjoint, so the winner's curse of the choice does not inflate its score."""
    half = len(examples) // 2
    if half == 0:
        raise ValueError(
            f"ledger: {len(examples)} learnable decision(s); best_single needs at least 2, "
            "one half to choose the offer and the other to score it"
        )
    ordered = examples.sort_values("ts", kind="stable").reset_index(drop=True)
    return ordered.iloc[:half].reset_index(drop=True), ordered.iloc[half:].reset_index(drop=True)


def _target(policy: Any, examples: Any) -> np.ndarray:
    from training.bandit_ledger import target_probabilities

    return target_probabilities(policy, examples)


def evaluate_policy(settings: Any, name: str, days: float | None = None) -> dict[str, Any]:
    """IPS, SNIPS, DM and DR of a named policy on the ledger's logs of the last ``days``,
    next to the logging policy's own value; warns when the logs barely support the policy."""
    from datetime import timedelta

    from experiments.ledger import now
    from training.bandit_ledger import ledger_examples, logged_distribution

    since = now() - timedelta(days=days) if days else None
    ex = ledger_examples(settings, since=since)
    if ex.empty:
        raise ValueError("ledger: no learnable decisions to evaluate on (treatment, offer shown)")
    choose, chosen_on = ex, 0  # a fixed or model policy is chosen on no logs
    if name == "best_single":  # chosen on the older half, scored on the newer one
        choose, ex = selection_split(ex)
        chosen_on = len(choose)
    policy = _named_policy(settings, name, choose)
    r, p = ex["reward"].to_numpy(float), ex["propensity"].to_numpy(float)
    dists = [logged_distribution(policy, x) for x in ex.itertuples(index=False)]
    target = np.array([d.get(o, 0.0) for d, o in zip(dists, ex["offer_id"], strict=True)])
    # reward model for DM/DR: the logged mean reward of each offer (self-normalised per offer)
    means = {o: float(np.average(r[ex["offer_id"] == o], weights=1 / p[ex["offer_id"] == o]))
             for o in set(ex["offer_id"])}  # fmt: skip
    q_logged = np.array([means[o] for o in ex["offer_id"]])
    v_hat = np.array([sum(pr * means.get(o, 0.0) for o, pr in d.items()) for d in dists])
    # target mass on offers the logging policy gave no chance in that context: IPS cannot see it
    unsupported = float(
        np.mean(
            [
                sum(pr for o, pr in d.items() if logging.get(o, 0.0) <= 0)
                for d, logging in zip(dists, ex["probabilities"], strict=True)
            ]
        )
    )
    estimates = {
        "ips": ips(r, p, target),
        "snips": snips(r, p, target) if target.sum() > 0 else None,
        "dm": dm(v_hat),
        "dr": dr(r, p, target, q_logged, v_hat),
    }
    ess = estimates["ips"].ess or 0.0
    warnings = []
    if ess < MIN_ESS:
        warnings.append(f"thin support: effective sample size {ess:.1f} < {MIN_ESS:.0f}")
    if unsupported > MAX_UNSUPPORTED:
        warnings.append(
            f"thin support: {unsupported:.1%} of the policy's probability is on offers the "
            "logging policy never showed in that context"
        )
    return {
        "policy": name,
        "version": str(getattr(policy, "version", name)),
        "n": len(ex),
        "chosen_on": chosen_on,  # rows a baseline was chosen on, disjoint from the n scored
        "since": since,
        "logging": ips(r, p, p).model_dump(),
        **{k: (v.model_dump() if v else None) for k, v in estimates.items()},
        "ess": ess,
        "zero_target_share": float(np.mean(target == 0)),
        "unsupported_mass": unsupported,
        "warnings": warnings,
    }
