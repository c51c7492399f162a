"""Holdout assignment: sticky, salted, at the configured share, independent per experiment."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from scipy.stats import binomtest

from record.assignment import (
    GLOBAL,
    StickyAssigner,
    Unit,
    assign,
    assign_all,
    bucket,
    effective_holdout_share,
)


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


# --- sticky assignment: the first draw is recorded and never re-drawn (issue 12, item 6) ---


def _ledger(url: str):
    from nextbest.db import engine_for
    from record.ledger import Ledger

    return Ledger(engine_for(url))


def _assign(assigner, key: str, others: list[str], salt: str, at: datetime, canonical=None):
    unit = Unit(key, lambda: (canonical or key, others))
    kw = dict(global_share=0.0, experiment_share=0.5, salt=salt, now=at)
    return assigner.assign("exp", unit, **kw)


def _splitting_salt(a: str, b: str) -> str:
    return next(
        f"s{i}"
        for i in range(500)
        if assign(a, "exp", 0.5, f"s{i}") != assign(b, "exp", 0.5, f"s{i}")
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_first_recorded_draw_wins_over_merges_and_workers(
    backend: str, tmp_path, request: pytest.FixtureRequest
) -> None:
    """A person drawn as ``anon`` then known as ``old`` (a merge into an older id that would
    hash to the other arm) keeps the first arm, in this worker and in a fresh one; a later
    draw of another id of theirs loses to the earlier one."""
    url = (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path}/l.db"
    )
    ledger = _ledger(url)
    salt = _splitting_salt("anon", "old")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    drawing = StickyAssigner(ledger)
    first = _assign(drawing, "anon", [], salt, t0).arm
    assert first == assign("anon", "exp", 0.5, salt)
    assert ledger.first_assignments(["exp"], ["anon"]) == {}  # written in groups, later
    drawing.flush()
    # merged: the person now goes by "old", whose own hash draws the other arm
    for worker in (drawing, StickyAssigner(ledger), StickyAssigner(ledger)):
        assert _assign(worker, "old", ["anon"], salt, t0 + timedelta(days=1)).arm == first
        assert _assign(worker, "anon", [], salt, t0 + timedelta(days=2), "old").arm == first
        worker.flush()
    stored = ledger.first_assignments(["exp", GLOBAL], ["old", "anon"])
    assert stored["exp"].unit_key == "anon" and stored["exp"].arm == first
    ledger.record_assignments(  # a second write of a recorded key changes nothing
        [dict(experiment="exp", unit_key="old", arm="x", assigned_at=t0 - timedelta(days=9))]
    )
    assert ledger.first_assignments(["exp"], ["old"])["exp"].arm == first


def test_a_returning_person_costs_no_ledger_query(tmp_path) -> None:
    ledger = _ledger(f"sqlite:///{tmp_path}/l.db")
    assigner = StickyAssigner(ledger)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    arm = _assign(assigner, "c1", [], "s", at)
    ledger.first_assignments = None  # any query now fails
    assert _assign(assigner, "c1", [], "s", at) == arm


def test_erasing_a_person_forgets_every_draw_of_theirs(tmp_path) -> None:
    ledger = _ledger(f"sqlite:///{tmp_path}/l.db")
    assigner = StickyAssigner(ledger)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    _assign(assigner, "h-cookie", [], "s", at)
    _assign(assigner, "c-old", ["h-cookie"], "s", at, canonical="c-new")
    _assign(assigner, "c-other", [], "s", at)
    assigner.flush()
    assert ledger.erase_assignments(["c-new", "c-old", "h-cookie"]) == 4  # global + exp, each
    assert ledger.first_assignments(["exp", GLOBAL], ["c-new", "c-old", "h-cookie"]) == {}
    assert set(ledger.first_assignments(["exp", GLOBAL], ["c-other"])) == {"exp", GLOBAL}


@pytest.mark.parametrize(
    ("global_share", "experiment_share", "effective"),
    [(0.05, 0.10, 0.145), (0.05, 0.0, 0.05), (0.0, 0.10, 0.10), (0.0, 0.0, 0.0), (0.2, 0.5, 0.6)],
)
def test_effective_held_out_share(
    global_share: float, experiment_share: float, effective: float
) -> None:
    assert effective_holdout_share(global_share, experiment_share) == pytest.approx(effective)
    n = 40000
    held = sum(
        assign_all(f"c{i}", "e", global_share=global_share, experiment_share=experiment_share,
                   salt="s").arm == "holdout"
        for i in range(n)
    )  # fmt: skip
    assert held / n == pytest.approx(effective, abs=0.01)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"experiments": ["global"]},
            "experiments\n  Value error, 'global' is reserved for the global holdout",
        ),
        (
            {"experiment": "global"},
            "experiment\n  Value error, 'global' is reserved for the global holdout",
        ),
        (
            {"experiments": ["spring sale"]},
            "Value error, 'spring sale' must be 1-64 letters, digits or _.:-",
        ),
    ],
)
def test_experiment_names_are_checked_at_load(env: dict, message: str) -> None:
    from pydantic import ValidationError

    from nextbest.settings import Settings

    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings(**env)


def test_the_cache_keeps_only_live_answers_and_at_most_its_size(tmp_path) -> None:
    """Before: expired answers stayed until 100,000 entries filled the cache (about 50 MB a
    worker, growing 2 MiB a minute under a soak of new customers); now an answer leaves when
    its ttl has passed, and the cache never holds more than ``max_cached``."""
    ledger = _ledger(f"sqlite:///{tmp_path}/l.db")
    assigner = StickyAssigner(ledger, ttl=timedelta(minutes=5), max_cached=50)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(40):  # one new person a second
        _assign(assigner, f"c{i}", [], "s", t0 + timedelta(seconds=i))
    assert len(assigner._cache) == 40
    _assign(assigner, "late", [], "s", t0 + timedelta(minutes=5, seconds=20))
    assert len(assigner._cache) == 40 - 21 + 1  # c0..c20 expired by then
    for i in range(200):
        _assign(assigner, f"d{i}", [], "s", t0 + timedelta(minutes=6))
    assert len(assigner._cache) == 50
    _assign(assigner, "d0", [], "s", t0 + timedelta(minutes=12))  # expired: answered again
    assert list(assigner._cache) == [("exp", "d0")]  # the newest entry; the rest expired
