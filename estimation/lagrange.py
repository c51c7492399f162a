"""The allocation LP's Lagrangian side, vectorised: with the limits priced at ``lam`` every
customer on their own takes ``argmax_o (v_io - lam . use_o)^+``, so the dual function, each
customer's choice and how close it is to a tie are a few passes over an n x k array.

The LP over a million customers is mostly customers whose choice is already settled by the
prices; only those near a tie need the solver (see ``estimation.allocation.solve_lp``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dense:
    """Candidates as a customers x offers grid: ``value`` is -inf where there is no pair,
    ``pair`` the candidate's index in the problem's arrays (-1 where none)."""

    value: np.ndarray
    pair: np.ndarray


def dense(customer: np.ndarray, offer: np.ndarray, value: np.ndarray, n: int, k: int) -> Dense:
    """The grid of a problem's pairs. A (customer, offer) listed twice keeps its higher value:
    the two use the same limits and the same customer, so the lower one is never chosen."""
    grid = np.full((n, k), -np.inf)
    pair = np.full((n, k), -1, dtype=np.int64)
    keep = np.arange(len(value))
    cell = customer * k + offer
    pair.ravel()[cell] = keep
    if not np.array_equal(pair.ravel()[cell], keep):  # a cell listed twice
        order = np.lexsort((value, cell))  # within a cell, highest value last
        last = np.ones(len(order), bool)
        last[:-1] = cell[order][1:] != cell[order][:-1]
        keep = order[last]
        pair.ravel()[cell[keep]] = keep
    grid.ravel()[cell[keep]] = value[keep]
    return Dense(grid, pair)


@dataclass(frozen=True)
class Choice:
    """Each customer's best option at some prices: ``best`` is an offer column, or k for
    nothing; ``top`` its reduced value (>= 0); ``gap`` how far the runner-up is behind."""

    best: np.ndarray
    top: np.ndarray
    gap: np.ndarray


def choose(grid: np.ndarray, charge: np.ndarray) -> Choice:
    """Every customer's best option when offer o costs ``charge[o]``; nothing is worth 0."""
    n, k = grid.shape
    reduced = np.empty((n, k + 1))
    np.subtract(grid, charge, out=reduced[:, :k])
    reduced[:, k] = 0.0
    best = reduced.argmax(axis=1)
    rows = np.arange(n)
    top = reduced[rows, best]
    reduced[rows, best] = -np.inf
    return Choice(best, top, top - reduced.max(axis=1))


def dual_value(grid: np.ndarray, use: np.ndarray, caps: np.ndarray, lam: np.ndarray) -> float:
    """The Lagrangian dual at prices ``lam >= 0``: ``lam . caps + sum_i max(0, max_o (v_io -
    lam . use_o))``. Every such value bounds the LP optimum from above; at the LP's own duals
    it equals it, which is the certificate that the prices are the right ones."""
    reduced = grid - use @ lam
    top = np.maximum(reduced.max(axis=1, initial=-np.inf), 0.0) if grid.size else np.zeros(0)
    return float(lam @ caps + top.sum())
