"""One offer per customer under shared limits: the LP, its rounding, a greedy baseline, a MILP.

The problem is a value matrix over (customer, offer) pairs, sparse (only allowed pairs with a
positive value are candidates), and a few packing limits: each offer's stock, the channel's
capacity, a money budget. With unit consumption (stock, capacity) the constraint matrix is
totally unimodular and HiGHS' LP optimum is integral; a budget (offer costs) can leave a few
customers fractional, which :func:`solve_lp` rounds down and refills greedily. The duals of
the limits are the value of one more unit of each: what /decide charges a show for using it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from estimation.lagrange import Choice, Dense, choose, dense

REPAIR_MAX_PAIRS = 50_000  # the rounding's MILP stays this small (else greedy refill alone)
REPAIR_SECONDS = 5.0
SAMPLE_BELOW = 20_000  # up to this many customers: column generation over all of them
SAMPLE_SHRINK = 10  # above: prices first estimated on a sample this many times smaller
# HiGHS solves for the customers nearest a tie at those prices: this many x sqrt(customers),
# as a sample's price error, and so the customers it leaves in doubt, shrinks like 1/sqrt(n)
# (at 1M x 8: 3,000 left ~9,000 more to free in a second, slower round; 6,000 needed none)
MARGIN_PER_ROOT = 8.0
MARGIN_MIN = 2_000
WINDOW = 2.0  # free customers' offers within this many margins of their best enter the LP
TOL = 1e-7  # an x this close to 1 is 1 (HiGHS' primal feasibility tolerance is 1e-7)


@dataclass(frozen=True)
class Limit:
    """One packing limit: ``sum(use[offer of pair] * x[pair]) <= capacity``. What a pair
    consumes depends on its offer only (a unit of stock, a slot of the channel, the offer's
    cost), which keeps the limits a few short vectors at any number of customers."""

    kind: str  # offer_stock | channel_capacity | budget
    key: str  # the offer id, the channel, or "money"
    capacity: float
    use: np.ndarray  # per offer, what choosing it consumes (0 where it does not)


@dataclass(frozen=True)
class Problem:
    """Candidates as parallel arrays, one entry per (customer, offer) pair worth choosing."""

    n_customers: int
    n_offers: int
    customer: np.ndarray  # int index of the pair's customer
    offer: np.ndarray  # int index of the pair's offer
    value: np.ndarray  # expected incremental value of the pair (> 0)
    limits: list[Limit]

    def check(self, chosen: np.ndarray) -> list[str]:
        """Which limits a 0/1 choice of pairs breaks (empty: feasible)."""
        broken = []
        per_customer = np.bincount(self.customer[chosen], minlength=self.n_customers)
        if per_customer.size and per_customer.max() > 1:
            broken.append("customer: more than one offer")
        for lim in self.limits:
            used = float(lim.use[self.offer[chosen]].sum())
            if used > lim.capacity + 1e-6:
                broken.append(f"{lim.kind}:{lim.key}: uses {used:g} of {lim.capacity:g}")
        return broken


@dataclass
class Allocation:
    """A 0/1 choice of pairs, its total value, and for the LP its duals and bound."""

    method: str
    chosen: np.ndarray  # bool per pair
    total: float
    seconds: float
    status: str = "optimal"
    bound: float | None = None  # the LP's objective (an upper bound on any allocation)
    prices: dict[tuple[str, str], float] = field(default_factory=dict)
    fractional: int = 0  # customers the LP left fractional (rounded down, then refilled)
    pairs: np.ndarray | None = None  # the LP's: the pairs its last restricted LP held


Solved = tuple[np.ndarray, np.ndarray, np.ndarray]  # x per pair, limit prices, LP's pairs


def _matrix(
    problem: Problem, pairs: np.ndarray, caps: np.ndarray | None = None
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """A_ub and b_ub over ``pairs``: one row per customer among them (at most one offer), then
    one per limit (``caps``, else the limits' own capacities); and the customers of the rows."""
    people, row = np.unique(problem.customer[pairs], return_inverse=True)
    m = len(pairs)
    cols = np.arange(m)
    rows = [sp.csr_matrix((np.ones(m), (row, cols)), shape=(len(people), m))]
    for lim in problem.limits:
        use = lim.use[problem.offer[pairs]]
        nz = np.flatnonzero(use)
        rows.append(sp.csr_matrix((use[nz], (np.zeros(nz.size, int), nz)), shape=(1, m)))
    if caps is None:
        caps = np.asarray([lim.capacity for lim in problem.limits], dtype=float)
    b = np.concatenate([np.ones(len(people)), caps])
    return sp.vstack(rows, format="csr"), b, people


def _highs(
    problem: Problem, pairs: np.ndarray, caps: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The LP over ``pairs`` alone: x per pair, the duals of its customers' rows (and which
    customers they are) and of the limits, as prices (>= 0)."""
    a, b, people = _matrix(problem, pairs, caps)
    # presolve off: on these (one row a customer) it took longer than it saved, 1.4-1.7 s
    # against 0.6 s for 16k pairs of 100k customers
    res = linprog(-problem.value[pairs], A_ub=a, b_ub=b, bounds=(0, 1), method="highs-ds",
                  options={"presolve": False})  # fmt: skip
    if res.status != 0:
        raise RuntimeError(f"LP failed: {res.message}")
    marg = -res.ineqlin.marginals
    return res.x, marg[: len(people)], people, np.maximum(marg[len(people) :], 0.0)


def _first_pairs(problem: Problem) -> np.ndarray:
    """The pairs the first restricted LP gets: for each offer, its best customers, as many as
    the limits could ever give that offer (the rest can only enter through pricing)."""
    picks = []
    for k in range(problem.n_offers):
        units = [lim.capacity / lim.use[k] for lim in problem.limits if lim.use[k] > 0]
        room = int(min([problem.n_customers, *units])) + 1
        mine = np.flatnonzero(problem.offer == k)
        if len(mine) > room:
            mine = mine[np.argpartition(-problem.value[mine], room - 1)[:room]]
        picks.append(mine)
    return np.unique(np.concatenate(picks)) if picks else np.zeros(0, int)


def _column_generation(problem: Problem, max_rounds: int) -> Solved:
    """The LP optimum (x per pair, the limits' prices, its last pairs) by column generation:
    a restricted LP over the pairs that can matter (each offer's best customers, as many as
    its limits allow), then every left-out pair is priced with the duals (value - customer's
    dual - limit prices x use) and the ones that would improve the objective are added, until
    none would. A single
    LP over all pairs is far slower (HiGHS took ~6 s for 10k x 8 here); this one is quick up
    to tens of thousands of customers, and at a million spends minutes in HiGHS."""
    pairs = _first_pairs(problem)
    for _ in range(max_rounds):
        x, mu_people, people, lam = _highs(problem, pairs)
        mu = np.zeros(problem.n_customers)
        mu[people] = mu_people
        reduced = problem.value - mu[problem.customer] - (_use(problem) @ lam)[problem.offer]
        reduced[pairs] = -np.inf
        better = np.flatnonzero(reduced > 1e-9)
        if better.size == 0:
            full = np.zeros(len(problem.value))
            full[pairs] = x
            return full, lam, pairs
        keep = max(len(pairs), 10_000)  # the most improving first; pricing brings the rest
        if better.size > keep:
            better = better[np.argpartition(-reduced[better], keep - 1)[:keep]]
        pairs = np.union1d(pairs, better)
    raise RuntimeError(f"LP: column generation did not converge in {max_rounds} rounds")


def _use(problem: Problem) -> np.ndarray:
    """offers x limits: what choosing each offer consumes of each limit."""
    use = np.zeros((problem.n_offers, len(problem.limits)))
    for j, lim in enumerate(problem.limits):
        use[:, j] = lim.use
    return use


def _shape(problem: Problem) -> tuple[int, int]:
    return problem.n_customers, problem.n_offers


def _caps(problem: Problem) -> np.ndarray:
    return np.asarray([lim.capacity for lim in problem.limits], dtype=float)


def _sample(problem: Problem, rng: np.random.Generator) -> Problem:
    """A random ``1/SAMPLE_SHRINK`` of the customers with every limit scaled down alike: its
    LP's prices estimate the whole run's (each price clears its limit on a population that
    looks the same, only smaller)."""
    n = problem.n_customers
    s = max(1, n // SAMPLE_SHRINK)
    renumber = np.full(n, -1)
    renumber[rng.choice(n, s, replace=False)] = np.arange(s)
    mine = np.flatnonzero(renumber[problem.customer] >= 0)
    lims = [Limit(lim.kind, lim.key, lim.capacity * s / n, lim.use) for lim in problem.limits]
    return Problem(s, problem.n_offers, renumber[problem.customer[mine]], problem.offer[mine],
                   problem.value[mine], lims)  # fmt: skip


def _lp(
    problem: Problem, max_rounds: int, rng: np.random.Generator, grid: Dense | None = None
) -> Solved:
    """The LP optimum: x per pair, the limits' prices, and the pairs HiGHS last held (with the
    fixed choices). Up to ``SAMPLE_BELOW`` customers by
    column generation; above, prices estimated on a sample (recursively, so each level starts
    from prices a tenth as noisy as it would from a fixed-size sample) fix every customer far
    from a tie, and HiGHS solves only the rest (``_margin_lp``)."""
    if problem.n_customers <= SAMPLE_BELOW:
        return _column_generation(problem, max_rounds)
    _, guess, _ = _lp(_sample(problem, rng), max_rounds, rng)
    if grid is None:
        grid = dense(problem.customer, problem.offer, problem.value, *_shape(problem))
    return _margin_lp(problem, grid, guess, max_rounds)


def _margin_lp(problem: Problem, grid: Dense, guess: np.ndarray, max_rounds: int) -> Solved:
    """The exact LP optimum from approximate prices ``guess``.

    At ``guess`` each customer's best option is clear except near a tie; the
    ``MARGIN_PER_ROOT * sqrt(n)`` customers nearest one (and, if the clear choices alone would
    overrun a limit, the closest of those using it) are left free, everyone else keeps their
    choice, and HiGHS solves the LP of the free customers on what the limits have left. Its
    prices are then checked against every kept customer: if each one's choice is still their
    best at those prices, the combined x and the prices satisfy complementary slackness for
    the whole LP, so both are optimal; any customer whose choice is no longer best is freed
    and the small LP solved again (the free set only grows: at worst everyone is free)."""
    n, k = problem.n_customers, problem.n_offers
    use, caps = _use(problem), _caps(problem)
    at = choose(grid.value, use @ guess)
    free = np.zeros(n, bool)
    share = max(MARGIN_MIN, int(MARGIN_PER_ROOT * np.sqrt(n)))
    if share >= n:
        free[:] = True
    else:
        free[np.argpartition(at.gap, share)[:share]] = True
    _release(at, use, caps, free)
    rows = np.arange(n)
    kept_value = np.where(at.best < k, grid.value[rows, np.minimum(at.best, k - 1)], 0.0)
    # a free customer's offers far below their best at ``guess`` stay out of the LP unless
    # its prices make one worth more than the customer's dual (then all of theirs go in)
    near = grid.value - use @ guess >= (at.top - WINDOW * at.gap[free].max(initial=0.0))[:, None]
    whole = np.zeros(n, bool)
    for _ in range(max_rounds):
        kept = ~free & (at.best < k)
        left = caps - np.bincount(at.best[kept], minlength=k) @ use
        ours = np.flatnonzero(free)
        pairs = grid.pair[ours]
        pairs = np.sort(pairs[(pairs >= 0) & (near[ours] | whole[ours, None])])
        x, mu_people, people, lam = _highs(problem, pairs, left)
        mu = np.zeros(n)
        mu[people] = mu_people
        charge = use @ lam
        now = choose(grid.value, charge)
        kept_reduced = np.where(at.best < k, kept_value - charge[np.minimum(at.best, k - 1)], 0.0)
        moved = ~free & (now.top > kept_reduced + 1e-9)
        short = free & ~whole & (now.top > mu + 1e-9)
        if not moved.any() and not short.any():
            full = np.zeros(len(problem.value))
            full[pairs] = x
            fixed = grid.pair[np.flatnonzero(kept), at.best[kept]]
            full[fixed] = 1.0
            return full, lam, np.union1d(pairs, fixed)
        free |= moved
        whole |= short | moved
    raise RuntimeError(f"LP: the margin did not settle in {max_rounds} rounds")


def _release(at: Choice, use: np.ndarray, caps: np.ndarray, free: np.ndarray) -> None:
    """Free kept customers, closest to a tie first, until what the kept ones use fits every
    limit (else the free customers' LP would have a negative capacity). In place."""
    k = use.shape[0]
    for j in range(len(caps)):
        kept = ~free & (at.best < k)
        over = float(np.bincount(at.best[kept], minlength=k) @ use[:, j] - caps[j])
        if over <= 1e-9:
            continue
        users = np.flatnonzero(kept & (use[np.minimum(at.best, k - 1), j] > 0))
        users = users[np.argsort(at.gap[users], kind="stable")]
        needed = np.searchsorted(np.cumsum(use[at.best[users], j]), over - 1e-9) + 1
        free[users[:needed]] = True


def solve_lp(problem: Problem, max_rounds: int = 50) -> Allocation:
    """HiGHS' LP optimum, rounded to a feasible 0/1 choice, with the limits' dual prices.

    Small runs are solved by column generation; large ones from prices estimated on a sample,
    with HiGHS only over the customers near a tie at those prices (``_lp``). Either way the
    result is the whole LP's optimum and its duals, not an approximation of them."""
    start = time.perf_counter()
    n, k, lims = problem.n_customers, problem.n_offers, problem.limits
    zero = {(lim.kind, lim.key): 0.0 for lim in lims}
    grid = dense(problem.customer, problem.offer, problem.value, n, k)
    first = choose(grid.value, np.zeros(k))
    best = np.zeros(len(problem.value), bool)
    mine = np.flatnonzero(first.best < k)
    best[grid.pair[mine, first.best[mine]]] = True
    used = np.bincount(first.best[mine], minlength=k) @ _use(problem)
    if (used <= _caps(problem) + 1e-6).all():  # nothing binds: everyone takes their best offer
        return Allocation("lp", best, float(problem.value[best].sum()),
                          time.perf_counter() - start, bound=float(problem.value[best].sum()),
                          prices=zero)  # fmt: skip
    x, lam, pairs = _lp(problem, max_rounds, np.random.default_rng(0), grid)
    chosen = x >= 1 - TOL
    partial = (x > TOL) & ~chosen
    fractional = int(np.unique(problem.customer[partial]).size)
    if fractional:  # a budget split a few customers: keep the integral part, repair the rest
        chosen = _repair(problem, chosen, pairs)
    prices = {(lim.kind, lim.key): float(d) for lim, d in zip(lims, lam, strict=True)}
    return Allocation("lp", chosen, float(problem.value[chosen].sum()),
                      time.perf_counter() - start, bound=float(problem.value @ x), prices=prices,
                      fractional=fractional, pairs=pairs)  # fmt: skip


def _repair(problem: Problem, chosen: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Complete the LP's integral part: the customers it left free, over its pairs, as a small
    MILP on what the limits have left (a budget's rounding loss on a small run was ~3% with a
    greedy refill alone), then greedily with whatever still fits."""
    busy = np.zeros(problem.n_customers, bool)
    busy[problem.customer[chosen]] = True
    rest = pairs[~busy[problem.customer[pairs]]]
    if 0 < len(rest) <= REPAIR_MAX_PAIRS:
        lims = [
            Limit(lim.kind, lim.key, lim.capacity - float(lim.use[problem.offer[chosen]].sum()),
                  lim.use)
            for lim in problem.limits
        ]  # fmt: skip
        sub = Problem(problem.n_customers, problem.n_offers, problem.customer, problem.offer,
                      problem.value, lims)  # fmt: skip
        fixed = solve_milp(sub, REPAIR_SECONDS, rest)
        if fixed.status != "no solution" and not problem.check(chosen | fixed.chosen):
            chosen = chosen | fixed.chosen
    # only offers that still fit somewhere can be added (limits only shrink): sorting just
    # their free customers' pairs, not all of a million customers', gives _fill the same queue
    busy[problem.customer[chosen]] = True
    left = _caps(problem) - np.bincount(problem.offer[chosen], minlength=problem.n_offers) @ _use(
        problem
    )
    fits = np.all(_use(problem) <= left + 1e-9, axis=1)
    cand = np.flatnonzero(fits[problem.offer] & ~busy[problem.customer])
    return _fill(problem, chosen, cand[np.argsort(-problem.value[cand], kind="stable")])


def _fill(problem: Problem, chosen: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Add pairs in ``order`` while their customer is free and every limit has room left.
    Plain Python over the pairs of free customers; it stops once no offer fits any more."""
    chosen = chosen.copy()
    busy = np.zeros(problem.n_customers, bool)
    busy[problem.customer[chosen]] = True
    order = order[~busy[problem.customer[order]]]
    left = [lim.capacity - float(lim.use[problem.offer[chosen]].sum()) for lim in problem.limits]
    # per offer, the limits it draws on and how much: usually its stock, the channel, the budget
    needs = [
        [(i, float(lim.use[k])) for i, lim in enumerate(problem.limits) if lim.use[k] > 0]
        for k in range(problem.n_offers)
    ]
    fits = [True] * problem.n_offers
    taken, cust, offer = busy.tolist(), problem.customer.tolist(), problem.offer.tolist()
    for step, j in enumerate(order.tolist()):
        if step % 4096 == 4095 and not any(
            fits[o] and all(u <= left[i] + 1e-9 for i, u in needs[o])
            for o in range(problem.n_offers)
        ):
            break  # nothing fits any more: the rest of the queue gets nothing
        c, k = cust[j], offer[j]
        if taken[c] or not fits[k]:
            continue
        if any(u > left[i] + 1e-9 for i, u in needs[k]):
            fits[k] = False  # limits only shrink: this offer never fits again
            continue
        for i, u in needs[k]:
            left[i] -= u
        chosen[j], taken[c] = True, True
    return chosen


def greedy(problem: Problem, seed: int = 0) -> Allocation:
    """What suites do: customers in an arbitrary (seeded random) order, each taking their best
    offer that still has room in every limit."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    rank = rng.permutation(problem.n_customers)  # the customer's place in the queue
    # by queue place, then best value first within a customer
    order = np.lexsort((-problem.value, rank[problem.customer]))
    chosen = _fill(problem, np.zeros(len(problem.value), bool), order)
    return Allocation("greedy", chosen, float(problem.value[chosen].sum()),
                      time.perf_counter() - start)  # fmt: skip


def solve_milp(
    problem: Problem, time_limit: float = 30.0, pairs: np.ndarray | None = None
) -> Allocation:
    """The integer optimum (HiGHS branch and bound) within ``time_limit`` seconds; status says
    whether it was proven optimal or stopped at the limit with its best solution.

    ``pairs``: only these candidates (the LP's final restricted set, which holds every pair
    that could improve the LP); over all pairs of a large run HiGHS does not even finish its
    presolve in the limit. The LP's bound stays the upper bound on any allocation either way."""
    start = time.perf_counter()
    pairs = np.arange(len(problem.value)) if pairs is None else np.asarray(pairs)
    chosen = np.zeros(len(problem.value), bool)
    if len(pairs) == 0:
        return Allocation("milp", chosen, 0.0, 0.0)
    a, b, _ = _matrix(problem, pairs)
    res = milp(
        -problem.value[pairs],
        constraints=LinearConstraint(a, -np.inf, b),
        integrality=np.ones(len(pairs)),
        bounds=Bounds(0, 1),
        options={"time_limit": time_limit},
    )
    seconds = time.perf_counter() - start
    if res.x is None:
        return Allocation("milp", chosen, float("nan"), seconds, status="no solution")
    chosen[pairs] = res.x > 0.5
    status = "optimal" if res.status == 0 else "time limit"
    return Allocation("milp", chosen, float(problem.value[chosen].sum()), seconds, status=status)
