"""Ledger.contact_histories: every customer's contact_history in one query, pending included."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from nextbest.db import engine_for
from record.ledger import Ledger
from record.tables import OutcomeRow, Slot, now
from tests.record.test_ledger import _decision


def filled(ledger: Ledger) -> None:
    t = now()
    many = [Slot(offer_id=o, position=k, probability=0.5) for k, o in enumerate(("a", "b"))]
    rows = [
        _decision("c1", "data_addon", "email"),
        _decision("c1", "family_plan", "web", slots=many),
        _decision("c1", "family_plan", "email", ts=t - timedelta(days=40)),  # out of the window
        _decision("c2", None, arm="holdout"),
        _decision("c3", "data_addon", "sms", status="cancelled"),
        _decision("c4", "loyalty_reward", "app"),
    ]
    for row in rows:
        ledger.record_decision(row)
    outcome = OutcomeRow(idempotency_key="k", decision_id=rows[0].decision_id,
                         customer_id="c1", type="conversion", value=1.0, ts=t)  # fmt: skip
    ledger.record_outcome(outcome)
    ledger.pending.hold(_decision("c4", "data_addon", "web"))  # planned, not committed yet
    ledger.pending.hold(_decision("c5", "data_addon", "web"))


def check(ledger: Ledger) -> None:
    filled(ledger)
    since = now() - timedelta(days=7)
    ids = ["c1", "c2", "c3", "c4", "c5", "nobody", "c1"]
    many = ledger.contact_histories(ids, since)
    assert list(many) == ["c1", "c2", "c3", "c4", "c5", "nobody"]
    for cid, history in many.items():
        alone = ledger.contact_history(cid, since)
        assert sorted(history.shows) == sorted(alone.shows) and history.last_response == alone[1]
    assert len(many["c1"].shows) == 2 and many["c1"].last_response is not None
    assert {s.offers for s in many["c1"].shows} == {("data_addon",), ("a", "b")}
    assert many["c4"].pending() and many["c5"].pending() and not many["c3"].shows
    assert ledger.contact_histories([], since) == {}


def test_contact_histories_on_sqlite_file(tmp_path: Path) -> None:
    ledger = Ledger(engine_for(f"sqlite:///{tmp_path / 'l.db'}"))
    check(ledger)
    assert ledger._histories is not None  # the fast path: the same values as Core's
    since, ids = now() - timedelta(days=7), ["c1", "c2", "c3", "c4", "c5", "nobody"]
    fast = ledger.contact_histories(ids, since)
    ledger._histories = None
    assert fast == ledger.contact_histories(ids, since)


def test_contact_histories_on_sqlite_memory() -> None:
    check(Ledger(engine_for("sqlite://")))


def test_contact_histories_on_postgresql(pg_url: str) -> None:
    check(Ledger(engine_for(pg_url)))


@pytest.mark.parametrize("n", [1, 501, 1200])
def test_contact_histories_in_chunks(tmp_path: Path, n: int) -> None:
    ledger = Ledger(engine_for(f"sqlite:///{tmp_path / 'l.db'}"))
    ledger.record_decisions([_decision(f"c{i}", "data_addon") for i in range(0, n, 7)])
    many = ledger.contact_histories([f"c{i}" for i in range(n)], now() - timedelta(days=1))
    assert len(many) == n
    assert sum(len(h.shows) for h in many.values()) == len(range(0, n, 7))
