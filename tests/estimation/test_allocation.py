"""The allocation LP: feasible for every limit, optimal, integral with unit consumption, and
priced exactly on the limits that bind; greedy loses where it provably must."""

from __future__ import annotations

import numpy as np
import pytest

from estimation import allocation
from estimation.allocation import Limit, Problem, greedy, solve_lp, solve_milp
from estimation.lagrange import dense, dual_value


def two_customers() -> Problem:
    """Customer 0 values A 10 and B 9; customer 1 values only A, at 8. One unit of A.
    Whoever is first in the greedy queue decides: customer 0 first takes A (10) and
    customer 1 gets nothing; the optimum gives B to 0 and A to 1 (17)."""
    unit = lambda k: (np.arange(2) == k) * 1.0  # noqa: E731
    return Problem(
        n_customers=2,
        n_offers=2,
        customer=np.array([0, 0, 1]),
        offer=np.array([0, 1, 0]),
        value=np.array([10.0, 9.0, 8.0]),
        limits=[
            Limit("offer_stock", "A", 1, unit(0)),
            Limit("offer_stock", "B", 5, unit(1)),
            Limit("channel_capacity", "email", 10, np.ones(2)),
        ],
    )


def first_in_queue(customer: int) -> int:
    """A greedy seed whose queue starts with ``customer``."""
    for seed in range(100):
        if np.random.default_rng(seed).permutation(2)[0] == customer:
            return seed
    raise AssertionError("no seed")


def test_lp_beats_greedy_where_greedy_must_lose() -> None:
    problem = two_customers()
    lp = solve_lp(problem)
    bad = greedy(problem, seed=first_in_queue(0))
    assert bad.total == 10.0
    assert lp.total == pytest.approx(17.0) and lp.bound == pytest.approx(17.0)
    assert list(np.flatnonzero(lp.chosen)) == [1, 2]  # B to customer 0, A to customer 1
    assert greedy(problem, seed=first_in_queue(1)).total == pytest.approx(17.0)


def test_prices_exactly_on_binding_limits() -> None:
    lp = solve_lp(two_customers())
    # one more A is worth 1 (10 + 8 instead of 17), one fewer costs 8 (9 instead of 17): in an
    # integral LP the dual is any price between the two, and it is never 0 on a binding limit
    assert 1.0 - 1e-9 <= lp.prices[("offer_stock", "A")] <= 8.0 + 1e-9
    assert lp.prices[("offer_stock", "B")] == 0.0
    assert lp.prices[("channel_capacity", "email")] == 0.0


def random_problem(seed: int, n: int = 300, k: int = 5, budget: bool = True) -> Problem:
    rng = np.random.default_rng(seed)
    allowed = rng.random((n, k)) < 0.6
    cust, off = np.nonzero(allowed)
    lims = [Limit("offer_stock", f"o{j}", int(rng.integers(5, 40)), (np.arange(k) == j) * 1.0)
            for j in range(k)]  # fmt: skip
    lims.append(Limit("channel_capacity", "sms", 90, np.ones(k)))
    if budget:
        lims.append(Limit("budget", "money", 1500.0, rng.uniform(0, 40, k)))
    return Problem(n, k, cust, off, rng.lognormal(0, 1, len(cust)), lims)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [False, True])
def test_lp_respects_every_limit_and_is_optimal(seed: int, budget: bool) -> None:
    problem = random_problem(seed, budget=budget)
    lp, base = solve_lp(problem), greedy(problem, seed=seed)
    full = solve_milp(problem, time_limit=60)  # over every pair: the true integer optimum
    assert problem.check(lp.chosen) == [] and problem.check(base.chosen) == []
    assert full.status == "optimal"
    assert lp.total >= base.total
    assert lp.total <= full.total + 1e-6 <= lp.bound + 1e-5
    if not budget:  # unit consumption: the LP's vertex is integral, so it is the optimum
        assert lp.fractional == 0
        assert lp.total == pytest.approx(full.total)
    else:  # within 0.5% of the integer optimum
        assert lp.total >= 0.995 * full.total


def test_limits_that_bind_and_prices_agree() -> None:
    problem = random_problem(3, budget=True)
    lp = solve_lp(problem)
    for lim in problem.limits:
        used = float(lim.use[problem.offer[lp.chosen]].sum())
        if lp.prices[(lim.kind, lim.key)] > 1e-9:  # priced: used (up to the rounding)
            assert used >= lim.capacity - max(lim.use) - 1e-6
    slack = [lim for lim in problem.limits if lim.use[problem.offer].sum() <= lim.capacity]
    for lim in slack:  # a limit nobody could exhaust is free
        assert lp.prices[(lim.kind, lim.key)] == 0.0


def test_nothing_binds_everyone_takes_their_best() -> None:
    problem = Problem(2, 2, np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([1.0, 3.0, 2.0]),
                      [Limit("offer_stock", "A", 5, np.array([1.0, 0.0]))])  # fmt: skip
    lp = solve_lp(problem)
    assert list(np.flatnonzero(lp.chosen)) == [1, 2]
    assert lp.prices == {("offer_stock", "A"): 0.0}


@pytest.fixture
def margin_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small problems through the large-run path: sampled prices, HiGHS at the margin only."""
    monkeypatch.setattr(allocation, "SAMPLE_BELOW", 40)
    monkeypatch.setattr(allocation, "MARGIN_MIN", 10)
    monkeypatch.setattr(allocation, "MARGIN_PER_ROOT", 1.0)


def limit_shapes(seed: int) -> Problem:
    """A random small run with a random mix of limits: stocks, a channel, a budget."""
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(60, 250)), int(rng.integers(2, 7))
    cust, off = np.nonzero(rng.random((n, k)) < rng.uniform(0.3, 0.9))
    lims = [Limit("offer_stock", f"o{j}", float(rng.integers(0, n // 4)), (np.arange(k) == j) * 1.0)
            for j in range(k) if rng.random() < 0.6]  # fmt: skip
    if rng.random() < 0.6:
        lims.append(Limit("channel_capacity", "sms", float(rng.integers(1, n)), np.ones(k)))
    if rng.random() < 0.4:
        lims.append(Limit("budget", "money", float(rng.uniform(0, 20 * n)), rng.uniform(0, 40, k)))
    return Problem(n, k, cust, off, rng.lognormal(0, 1, len(cust)), lims)


def used_by(problem: Problem, x: np.ndarray) -> np.ndarray:
    return np.asarray([lim.use[problem.offer] @ x for lim in problem.limits])


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("path", ["column_generation", "margin"])
def test_lp_is_the_optimum_with_valid_duals(
    seed: int, path: str, request: pytest.FixtureRequest
) -> None:
    if path == "margin":
        request.getfixturevalue("margin_path")
    problem = limit_shapes(seed)
    lp, full = solve_lp(problem), solve_milp(problem, time_limit=60)
    prices = np.asarray([lp.prices[(lim.kind, lim.key)] for lim in problem.limits])
    assert problem.check(lp.chosen) == [] and full.status == "optimal"
    assert lp.total <= full.total + 1e-9 <= lp.bound + 1e-6
    assert (prices >= 0).all()
    # the duals certify the bound: the Lagrangian at these prices equals the LP's objective
    grid = dense(problem.customer, problem.offer, problem.value, problem.n_customers,
                 problem.n_offers)  # fmt: skip
    use = np.stack([lim.use for lim in problem.limits], axis=1) if problem.limits else None
    caps = np.asarray([lim.capacity for lim in problem.limits])
    if use is not None:
        assert dual_value(grid.value, use, caps, prices) == pytest.approx(lp.bound, rel=1e-9)
    if all(lim.kind != "budget" for lim in problem.limits):  # unit use: integral, the optimum
        assert lp.fractional == 0
        assert lp.total == pytest.approx(full.total, rel=1e-9)
        slack = used_by(problem, lp.chosen.astype(float)) < caps - 1e-9
        assert (prices[slack] <= 1e-9).all()  # a limit with room left is free


def test_margin_path_matches_column_generation(margin_path: None) -> None:
    problem = random_problem(7, n=3_000, k=6)
    lp = solve_lp(problem)
    allocation.SAMPLE_BELOW = 10**9  # the fixture's monkeypatch restores it
    reference = solve_lp(problem)
    assert lp.bound == pytest.approx(reference.bound, rel=1e-9)
    assert lp.total == pytest.approx(reference.total, rel=1e-9)
    for key, price in reference.prices.items():
        assert lp.prices[key] == pytest.approx(price, rel=1e-6, abs=1e-9)
