"""The vectorised Lagrangian: the grid keeps a pair's best duplicate, choices and their gaps are
each customer's own argmax, and the dual function bounds the LP from above at any prices."""

from __future__ import annotations

import numpy as np
import pytest

from estimation.allocation import Limit, Problem, solve_lp
from estimation.lagrange import choose, dense, dual_value


def test_a_pair_listed_twice_keeps_its_higher_value() -> None:
    grid = dense(np.array([0, 1, 0]), np.array([1, 0, 1]), np.array([2.0, 5.0, 3.0]), 2, 2)
    assert grid.value.tolist() == [[-np.inf, 3.0], [5.0, -np.inf]]
    assert grid.pair.tolist() == [[-1, 2], [1, -1]]


def test_choice_is_the_best_reduced_value_or_nothing() -> None:
    grid = np.array([[4.0, 3.0], [1.0, -np.inf], [2.0, 2.5]])
    at = choose(grid, charge=np.array([2.0, 0.0]))  # reduced: [2, 3], [-1, -inf], [0, 2.5]
    assert at.best.tolist() == [1, 2, 1]  # column 2 is "nothing"
    assert at.top.tolist() == [3.0, 0.0, 2.5]
    assert at.gap.tolist() == [1.0, 1.0, 2.5]


@pytest.mark.parametrize("seed", range(5))
def test_dual_bounds_the_lp_at_any_prices(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = 80, 3
    cust, off = np.nonzero(rng.random((n, k)) < 0.7)
    lims = [Limit("offer_stock", f"o{j}", 10.0, (np.arange(k) == j) * 1.0) for j in range(k)]
    lims.append(Limit("budget", "money", 200.0, rng.uniform(1, 20, k)))
    problem = Problem(n, k, cust, off, rng.lognormal(0, 1, len(cust)), lims)
    lp = solve_lp(problem)
    grid = dense(cust, off, problem.value, n, k).value
    use = np.stack([lim.use for lim in lims], axis=1)
    caps = np.asarray([lim.capacity for lim in lims])
    optimal = np.asarray([lp.prices[(lim.kind, lim.key)] for lim in lims])
    assert dual_value(grid, use, caps, optimal) == pytest.approx(lp.bound, rel=1e-9)
    for _ in range(20):
        other = optimal + rng.uniform(-0.5, 0.5, len(lims))
        assert dual_value(grid, use, caps, np.maximum(other, 0.0)) >= lp.bound - 1e-9
