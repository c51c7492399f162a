"""The report's off-policy section: what simple candidate policies would have earned on the
decisions the bandit learns from, with the bandit's reward and window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from estimation.ope import ips, snips


class PolicyEstimate(BaseModel):
    policy: str
    estimator: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    ess: float | None


def ope_estimates(settings: Any) -> tuple[list[PolicyEstimate], str]:
    """IPS and SNIPS of simple candidate policies on the ledger's logged decisions.

    The reward and window are the bandit's (``training.bandit_ledger.ledger_examples``: the
    orders ``record.attribution.credit`` gives each decision, ``settings.bandit_reward``,
    ``settings.attribution_days``), on the decisions it learns from. Candidates need no model:
    the logging policy itself, uniform choice among the offers that were allowed, and each offer
    "whenever allowed, else as logged". Ledger rows no report can count (an outcome worth
    1e300 would make every estimate 1e295) are skipped and counted in the note
    (``record.attribution.sane_rows``, in ``ledger_examples``).
    """
    url = settings.ledger_db_url
    if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).exists():
        return [], "No decision ledger yet: off-policy estimates need logged decisions."
    from sqlalchemy import inspect

    from experiments.report_units import skipped_note
    from nextbest.db import engine_for
    from training.bandit_ledger import ledger_examples

    try:
        has_table = inspect(engine_for(url)).has_table("decisions")
        logs = ledger_examples(settings) if has_table else pd.DataFrame()
    except Exception as exc:  # noqa: BLE001 - the rest of the report stands without it
        return [], f"The ledger could not be read ({type(exc).__name__})."
    skipped = logs.attrs.get("skipped", {})
    skipped_text = f" Ledger {skipped_note(skipped)}." if skipped else ""
    if logs.empty:
        note = "No logged decisions yet: off-policy estimates need the service to have run."
        return [], note + skipped_text
    if len(logs) < 20:
        note = f"Only {len(logs)} logged decisions with propensities: too few to estimate."
        return [], note + skipped_text
    reward, p = logs["reward"].to_numpy(float), logs["propensity"].to_numpy(float)
    allowed = logs["probabilities"].map(lambda d: list(d) if isinstance(d, dict) else [])
    logged = logs["offer_id"].to_numpy()
    targets = {
        "logging policy": p,
        "uniform among allowed offers": np.array(
            [1 / len(a) if o in a else 0.0 for o, a in zip(logged, allowed, strict=True)]
        ),
    }
    for offer in sorted(set(logged)):
        targets[f"always {offer} when allowed"] = np.array(
            [(1.0 if o == offer else 0.0) if offer in a else pi
             for o, a, pi in zip(logged, allowed, p, strict=True)]
        )  # fmt: skip
    out = []
    for name, target in targets.items():
        for est in (ips, snips):
            try:
                e = est(reward, p, target)
            except ValueError:
                continue
            fields = e.model_dump(include={"estimator", "value", "ci_low", "ci_high", "n", "ess"})
            out.append(PolicyEstimate(policy=name, **fields))
    note = (
        f"IPS and SNIPS on {len(logs)} logged decisions (reward: the bandit's "
        f"{settings.bandit_reward} reward, {settings.attribution_days}-day window)." + skipped_text
    )
    return out, note
