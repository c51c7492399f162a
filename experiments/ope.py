"""Off-policy evaluation of a named policy on the ledger's recent logs (``nextbest ope``).

The estimators themselves (IPS, SNIPS, DM, DR, the paired advantage) are pure functions in
:mod:`estimation.ope`; this module picks the policy, reads the logs the bandit learns from
(the same reward, window and attribution) and warns when the logs barely support it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from estimation.ope import dm, dr, ips, snips

MIN_ESS = 100.0
MAX_UNSUPPORTED = 0.05


class FixedPolicy:
    """A policy without a model: ``uniform`` over the allowed offers, or always one offer
    (uniform over the allowed set when that offer is not allowed)."""

    def __init__(self, offer_id: str | None = None) -> None:
        self.offer_id = offer_id
        self.version = f"offer:{offer_id}" if offer_id else "uniform"

    def distribution(
        self,
        features: Any,
        channel: str,
        context: Any,
        allowed: list[str],
        scores: Any = None,
        p_treated: Any = None,
    ) -> dict:
        """The policy's distribution; ``scores`` and ``p_treated`` (the models' values and
        treated rates) do not move a fixed one."""
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

    from record.tables import now
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
