"""The commit's staleness check reads every customer's shows in one grouped query per window
start (``counted``), with the answers one count query per row gave."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from nextbest.db import engine_for
from record.ledger import Ledger
from record.ledger_pending import COUNT_CHUNK, PlannedOn, counted
from record.tables import DecisionRow, now
from tests.record.test_contact_histories import filled
from tests.record.test_ledger import _decision


def planned(
    cid: str, since: datetime, committed: int, pending: tuple[str, ...] = ()
) -> DecisionRow:
    row = _decision(cid, "data_addon", "web")
    row.planned_on = PlannedOn(since, committed, pending)
    return row


def test_counted_asks_once_per_window_and_chunk() -> None:
    t = now()
    old = t - timedelta(days=9)
    rows = [planned(f"c{i}", t, 0) for i in range(COUNT_CHUNK + 1)]
    rows += [planned("c0", t, 0), planned("c1", old, 0), _decision("c7", None)]
    asked: list[tuple[int, datetime]] = []

    def count_many(cids: list[str], since: datetime) -> dict[str, int]:
        asked.append((len(cids), since))
        return {c: int(c[1:]) + (1 if since == old else 0) for c in cids if c != "c3"}

    count = counted(rows, count_many)
    assert asked == [(COUNT_CHUNK, t), (1, t), (1, old)]  # each customer once per window
    assert (count("c5", t), count("c3", t), count("c1", old), count("c9", old)) == (5, 0, 2, 0)


def check(ledger: Ledger) -> None:
    """c1 has two shows in the window, c4 one, c2 and c3 none (a holdout, a cancelled one)."""
    filled(ledger)
    since = now() - timedelta(days=7)
    first = planned("c1", since, 2)
    rows = [
        first,
        planned("c4", since, 0),  # another writer showed c4 something: stale
        planned("c2", since, 0),
        planned("nobody", since, 0),
        planned("c1", since, 2, (first.decision_id,)),  # counted the first: it is written
        planned("c3", since, 1),  # counted a show that is not there: stale
    ]
    stale = ledger.record_decisions(rows)
    assert [r.customer_id for r in stale] == ["c4", "c3"]
    written = {r.decision_id for r in rows} - {r.decision_id for r in stale}
    assert all(ledger.decision(d) is not None for d in written)
    assert all(ledger.decision(r.decision_id) is None for r in stale)


def test_stale_rows_on_an_sqlite_file(tmp_path: Path) -> None:
    ledger = Ledger(engine_for(f"sqlite:///{tmp_path / 'l.db'}"))
    assert ledger._insert is not None  # the fast path
    check(ledger)


def test_stale_rows_on_the_core_path(tmp_path: Path) -> None:
    ledger = Ledger(engine_for(f"sqlite:///{tmp_path / 'l.db'}"))
    ledger._insert = None  # the path of every other database
    check(ledger)


@pytest.mark.slow
def test_stale_rows_on_postgresql(pg_url: str) -> None:
    check(Ledger(engine_for(pg_url)))
