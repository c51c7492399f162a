"""Outbound runs measured: the truth's value of an allocation on the simulated world, and the
LP against greedy at 10k-1M synthetic customers x 8 offers (solver timing; the pipeline's own
speed is ``bench batch``'s)."""

from __future__ import annotations

import resource
import time
from datetime import datetime
from typing import Any

import numpy as np

from estimation.allocation import Allocation, Limit, Problem, greedy, solve_lp
from estimation.lagrange import dense, dual_value
from nextbest.settings import Settings


def world_truth(settings: Settings, graph: Any) -> Any:
    """The truth's expected incremental value per (customer, offer) on a channel at a time, for
    the customers the identity graph resolves to a simulated person (through their CRM record,
    as features/build does); 0 for a customer it cannot place. None without a world."""
    if graph is None or not (settings.world_dir / "people.parquet").exists():
        return None
    from features.schema import IDENTITY_INPUT_COLUMNS
    from simulator.truth import Truth

    truth = Truth.load(settings.world_dir)
    from simulator.world import load_world_tables

    _, identities, _, _, _ = load_world_tables(settings.world_dir)
    crm = identities.loc[identities["source"] == "crm"].reset_index(drop=True)
    cols = [c for c in IDENTITY_INPUT_COLUMNS if c in crm.columns]
    crm["customer_id"] = graph.map_identifiers(crm[cols]).to_numpy()
    crm = crm.dropna(subset=["customer_id"]).drop_duplicates("customer_id")
    person = dict(zip(crm["customer_id"], crm["true_person_id"], strict=True))

    def values(ids: list[str], offer_ids: list[str], channel: str, at: datetime) -> np.ndarray:
        out = np.zeros((len(ids), len(offer_ids)))
        known = [i for i, c in enumerate(ids) if person.get(c) in truth.index]
        if not known:
            return out
        k = len(offer_ids)
        people = np.repeat(np.asarray([person[ids[i]] for i in known], dtype=object), k)
        offers = np.tile(np.asarray(offer_ids, dtype=object), len(known))
        when = np.repeat(np.datetime64(at.replace(tzinfo=None), "us"), len(people))
        r = truth.expected_rewards(people, when, channel, offers)
        out[known] = r.reshape(len(known), k)
        return out

    return values


def synthetic_problem(n: int, k: int = 8, seed: int = 0) -> Problem:
    """n customers x k offers, values from a skewed distribution (a few customers are worth
    much more), ~70% of pairs allowed; stock for 2% of customers per offer, channel capacity
    for 10%, and a budget that binds about as hard."""
    rng = np.random.default_rng(seed)
    allowed = rng.random((n, k)) < 0.7
    value = rng.lognormal(0.0, 1.0, (n, k)) * rng.uniform(0.5, 2.0, k)
    cust, off = np.nonzero(allowed)
    cost = rng.uniform(0.0, 60.0, k)
    lims = [Limit("offer_stock", f"o{j}", float(max(1, n // 50)), (np.arange(k) == j) * 1.0)
            for j in range(k)]  # fmt: skip
    lims.append(Limit("channel_capacity", "email", float(n // 10), np.ones(k)))
    lims.append(Limit("budget", "money", float(n // 10) * 20.0, cost))
    return Problem(n, k, cust, off, value[cust, off], lims)


def dual_gap(problem: Problem, lp: Allocation) -> float:
    """How far the Lagrangian at the LP's prices is above its objective, relative: 0 (to
    rounding) exactly when the prices are the LP's optimal duals."""
    grid = dense(problem.customer, problem.offer, problem.value, problem.n_customers,
                 problem.n_offers).value  # fmt: skip
    use = np.stack([lim.use for lim in problem.limits], axis=1)
    caps = np.asarray([lim.capacity for lim in problem.limits])
    prices = np.asarray([lp.prices[(lim.kind, lim.key)] for lim in problem.limits])
    return (dual_value(grid, use, caps, prices) - (lp.bound or 0.0)) / max(lp.bound or 1.0, 1.0)


def bench_allocation(sizes: list[int], seed: int = 0) -> dict[str, Any]:
    """LP and greedy totals and times at each size, with peak memory and the duals' check."""
    out = []
    for n in sizes:
        t = time.perf_counter()
        problem = synthetic_problem(n, seed=seed)
        built = time.perf_counter() - t
        lp, base = solve_lp(problem), greedy(problem, seed=seed)
        out.append({
            "customers": n, "pairs": int(len(problem.value)), "build_s": round(built, 2),
            "lp_total": round(lp.total, 2), "lp_bound": round(lp.bound or 0.0, 2),
            "lp_s": round(lp.seconds, 2), "lp_dual_gap": float(f"{dual_gap(problem, lp):.1e}"),
            "lp_pairs": 0 if lp.pairs is None else len(lp.pairs),
            "greedy_total": round(base.total, 2), "greedy_s": round(base.seconds, 2),
            "lp_over_greedy": round(lp.total / base.total, 4) if base.total else None,
            "feasible": not problem.check(lp.chosen) and not problem.check(base.chosen),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        })  # fmt: skip
    return {"sizes": out}
