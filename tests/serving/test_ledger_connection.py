"""The ledger's SQLite fast paths keep one connection per thread: it must behave like a pooled
one (settings applied by ``dispose`` reach it, a failed write leaves nothing behind and
nothing open, every commit is visible to other connections at once)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from nextbest.db import engine_for
from record.ledger import Ledger
from record.tables import now
from tests.serving.conftest import decision_row


def _autocheckpoint(ledger: Ledger) -> int:
    return ledger._held.get(ledger.engine).execute("PRAGMA wal_autocheckpoint").fetchone()[0]


def test_the_held_connection_follows_dispose(tmp_path) -> None:  # noqa: ANN001
    from serving.writer import WalCheckpointer

    engine = engine_for(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = Ledger(engine, synchronous="NORMAL")
    ledger.record_decision(decision_row())
    assert _autocheckpoint(ledger) == 1000
    checkpointer = WalCheckpointer(engine, every=0.05).start()  # listener + dispose
    try:
        ledger.record_decision(decision_row())
        assert _autocheckpoint(ledger) == 0  # commits no longer checkpoint on their own
    finally:
        checkpointer.stop()
    assert _autocheckpoint(ledger) == 1000
    assert ledger.counts()["decisions"] == 2


def test_a_failed_write_leaves_nothing_open(tmp_path) -> None:  # noqa: ANN001
    ledger = Ledger(engine_for(f"sqlite:///{tmp_path / 'ledger.db'}"), synchronous="NORMAL")
    first = decision_row()
    ledger.record_decision(first)
    with pytest.raises(IntegrityError, match="UNIQUE constraint failed"):
        ledger.record_decisions([decision_row(), first])  # the second row repeats a key
    assert ledger.counts()["decisions"] == 1  # the whole group rolled back
    ledger.record_decision(decision_row())  # a fresh connection, no transaction left over
    assert ledger.counts()["decisions"] == 2
    shows, _ = ledger.contact_history("c", now() - timedelta(days=1))
    assert len(shows) == 2


def test_threads_write_through_their_own_connections(tmp_path) -> None:  # noqa: ANN001
    ledger = Ledger(engine_for(f"sqlite:///{tmp_path / 'ledger.db'}"), synchronous="NORMAL")
    errors: list[BaseException] = []

    def write(customer: str) -> None:
        try:
            for _ in range(50):
                ledger.record_decision(decision_row(customer))
                assert ledger.contact_history(customer, now() - timedelta(days=1))[0]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert ledger.counts()["decisions"] == 200  # seen at once by a pooled connection


def test_a_file_ledger_takes_the_fast_paths(tmp_path) -> None:  # noqa: ANN001
    """Every statement they run must compile to the positional SQL they expect (a literal
    bound as a parameter, say, would silently send each decision down the general path)."""
    ledger = Ledger(engine_for(f"sqlite:///{tmp_path / 'ledger.db'}"))
    assert ledger._insert is not None and ledger._history is not None


def test_a_memory_ledger_takes_the_general_path() -> None:
    ledger = Ledger(engine_for("sqlite://"))
    assert ledger._insert is None and ledger._history is None
    ledger.record_decision(decision_row())
    assert len(ledger.contact_history("c", now() - timedelta(days=1))[0]) == 1
