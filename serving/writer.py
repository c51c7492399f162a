"""Committing decisions: ``commit`` plans and commits one decision in its caller's thread (the
journey runner, the basket scan, the profile view), and WAL checkpoints run off the commits.
/decide's batches are committed by ``serving.decision_batcher``, one transaction a batch.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, event

from nextbest.db import is_sqlite_file
from record.ledger import Ledger, LedgerError
from record.ledger_pending import MAX_PLANS
from record.tables import DecisionRow

log = logging.getLogger("nextbest.writer")
T = TypeVar("T")


def commit(make: Callable[[], tuple[T, DecisionRow]], ledger: Ledger) -> tuple[T, DecisionRow]:
    """One caller's decision, in its own thread and transaction: plan with
    ``make``, commit, and plan again while the commit finds the plan stale."""
    for _ in range(MAX_PLANS):
        response, row = make()
        ledger.pending.hold(row)  # other plans of this process count it until it is written
        try:
            written = ledger.record_decision(row)
        except Exception:
            ledger.pending.release([row], failed=[row])
            raise
        ledger.pending.release([row], failed=[] if written else [row])
        if written:
            return response, row
    raise LedgerError(f"customer {row.customer_id}: history kept changing over {MAX_PLANS} plans")


class WalCheckpointer:
    """SQLite WAL checkpoints in a background thread instead of inside a decision's commit.

    SQLite's automatic checkpoint runs in whichever commit crosses 1000 WAL pages: that commit
    then copies the WAL into the database and fsyncs it, on the event loop (measured here, one
    decision per commit: p99 1.0-4.3 ms and 34-49 commits over 3 ms in 4000; with this thread,
    p99 0.45 ms and 11). Auto-checkpoints are switched off for the engine's connections and a
    thread checkpoints every ``every`` seconds instead (PASSIVE: it never blocks a writer).
    The WAL keeps every committed row either way, so a killed process loses nothing; only the
    moment the WAL is copied back into the database changes.
    """

    def __init__(self, engine: Engine, every: float = 0.5) -> None:
        self.engine, self.every = engine, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0

    @staticmethod
    def applies(engine: Engine) -> bool:
        """Only for a SQLite file (WAL); PostgreSQL and memory databases are left alone."""
        return is_sqlite_file(engine)

    def start(self) -> WalCheckpointer:
        if self._thread is not None or not self.applies(self.engine):
            return self
        self._stop.clear()
        if not event.contains(self.engine, "connect", _no_auto_checkpoint):
            event.listen(self.engine, "connect", _no_auto_checkpoint)
        self.engine.dispose()  # pooled connections pick the setting up on reconnect
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        conn = sqlite3.connect(self.engine.url.database, timeout=30, isolation_level=None)
        try:
            while not self._stop.wait(self.every):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error:  # busy or locked: the next round retries
                    log.debug("wal checkpoint skipped", exc_info=True)
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop the thread and restore automatic checkpoints on new connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            if event.contains(self.engine, "connect", _no_auto_checkpoint):
                event.remove(self.engine, "connect", _no_auto_checkpoint)
            self.engine.dispose()


def _no_auto_checkpoint(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")
