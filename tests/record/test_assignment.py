"""Holdout assignment: sticky, salted, at the configured share, independent per experiment."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from record.assignment import assign, assign_all, bucket


def test_sticky_and_salted() -> None:
    arms = [assign(f"c{i}", "exp", 0.3, "salt") for i in range(2000)]
    assert arms == [assign(f"c{i}", "exp", 0.3, "salt") for i in range(2000)]  # restart, channel
    other = [assign(f"c{i}", "exp", 0.3, "other-salt") for i in range(2000)]
    assert sum(a != b for a, b in zip(arms, other, strict=True)) > 500  # salt changes who


def test_share_is_the_holdout_rate() -> None:
    n = 20000
    k = sum(assign(f"c{i}", "exp", 0.1, "s") == "holdout" for i in range(n))
    assert binomtest(k, n, 0.1).pvalue > 0.001


def test_experiments_are_independent() -> None:
    a = [assign(f"c{i}", "a", 0.5, "s") == "holdout" for i in range(20000)]
    b = [assign(f"c{i}", "b", 0.5, "s") == "holdout" for i in range(20000)]
    both = sum(x and y for x, y in zip(a, b, strict=True))
    assert binomtest(both, 20000, 0.25).pvalue > 0.001


def test_global_holdout_comes_first() -> None:
    ids = [f"c{i}" for i in range(5000)]
    res = [assign_all(c, "exp", global_share=0.05, experiment_share=0.1, salt="s") for c in ids]
    glob = [r for r in res if r.holdout == "global"]
    exp = [r for r in res if r.holdout == "experiment"]
    assert all(r.arm == "holdout" for r in glob + exp)
    assert 150 < len(glob) < 350 and 300 < len(exp) < 600
    assert all(
        bucket(c, "global", "s") < 0.05
        for c, r in zip(ids, res, strict=True)
        if r.holdout == "global"
    )


@pytest.mark.parametrize(
    ("cid", "share", "match"),
    [
        ("c1", 1.0, "holdout_share must be in"),
        ("c1", -0.1, "holdout_share must be in"),
        ("", 0.1, "customer_id must be a non-empty string"),
    ],
)
def test_bad_input(cid: str, share: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        assign(cid, "exp", share, "s")
