"""Group commit: concurrent decisions are all committed before their callers resume."""

from __future__ import annotations

import asyncio

import pytest

from record.ledger import Ledger
from record.tables import DecisionRow
from serving.writer import GroupWriter
from tests.serving.conftest import decision_row


def test_concurrent_puts_are_committed_in_groups(deps) -> None:  # noqa: ANN001
    ledger: Ledger = deps.ledger
    calls: list[int] = []
    original = ledger.record_decisions

    def counting(rows: list[DecisionRow]) -> list[DecisionRow]:
        calls.append(len(rows))
        return original(rows)

    ledger.record_decisions = counting  # type: ignore[method-assign]
    writer = GroupWriter(ledger)
    rows = [decision_row() for _ in range(50)]

    async def go() -> None:
        await asyncio.gather(*(writer.put(r) for r in rows))

    asyncio.run(go())
    assert sum(calls) == 50 and len(calls) < 50  # grouped
    assert ledger.counts()["decisions"] == 50


def test_a_failed_commit_reaches_every_waiter(deps) -> None:  # noqa: ANN001
    writer = GroupWriter(deps.ledger)
    row = decision_row()

    async def go() -> None:
        await writer.put(row)
        await asyncio.gather(writer.put(row), writer.put(decision_row()))  # duplicate primary key

    with pytest.raises(Exception, match="UNIQUE constraint failed: decisions.decision_id"):
        asyncio.run(go())
    assert deps.ledger.counts()["decisions"] == 1  # the whole group rolled back, none acked


def test_wal_checkpoints_move_off_the_commits(tmp_path) -> None:  # noqa: ANN001
    """While the checkpointer runs, commits never checkpoint (auto-checkpoint is 0) and its
    thread copies the WAL into the database instead; stopped, SQLite's own come back."""
    import time

    from nextbest.db import engine_for
    from serving.writer import WalCheckpointer

    path = tmp_path / "ledger.db"
    engine = engine_for(f"sqlite:///{path}")
    ledger = Ledger(engine, synchronous="NORMAL")
    empty = path.stat().st_size
    checkpointer = WalCheckpointer(engine, every=0.05).start()
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        for _ in range(6):  # ~1.5k pages: past SQLite's 1000-page auto-checkpoint
            ledger.record_decisions([decision_row().model_copy(update={"scores": {"x": "y" * 4000}})
                                     for _ in range(250)])  # fmt: skip
        seen = checkpointer.checkpoints
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        # only the thread can have moved the rows out of the WAL into the database file
        assert path.stat().st_size > empty + 4_000_000
    finally:
        checkpointer.stop()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    assert ledger.counts()["decisions"] == 1500
    assert not WalCheckpointer.applies(engine_for("sqlite://"))  # in memory: nothing to do
