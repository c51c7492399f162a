"""Group commit: concurrent decisions are all committed before their callers resume, a batch in
one transaction; a row the database refuses fails alone."""

from __future__ import annotations

import asyncio

import pytest

from record.ledger import Ledger, RowRejected
from record.tables import DecisionRow
from serving.decide import DecideRequest
from serving.decision_batcher import DecisionBatcher
from tests.serving.conftest import decision_row


def test_concurrent_decisions_are_committed_in_groups(deps) -> None:  # noqa: ANN001
    """Fifty concurrent /decide calls: fewer commits than decisions, every one written."""
    ledger: Ledger = deps.ledger
    calls: list[int] = []
    original = ledger.record_decisions

    def counting(rows: list[DecisionRow]) -> list[DecisionRow]:
        calls.append(len(rows))
        return original(rows)

    ledger.record_decisions = counting  # type: ignore[method-assign]
    batcher = DecisionBatcher(deps)
    requests = [DecideRequest(customer_id=f"c-{i}", channel="web") for i in range(50)]

    async def go() -> None:
        await asyncio.gather(*(batcher.decide(r) for r in requests))

    asyncio.run(go())
    batcher.close()
    assert sum(calls) == 50 and len(calls) < 50  # grouped
    assert ledger.counts()["decisions"] == 50


def test_a_failed_commit_reaches_every_waiter(deps) -> None:  # noqa: ANN001
    """A failure of the whole transaction (the disk is full) fails every waiter of the batch
    with it, and nothing of the batch is written."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    ledger: Ledger = deps.ledger
    ledger.record_decision(decision_row())
    original = ledger.record_decisions

    def full(rows: list[DecisionRow]) -> list[DecisionRow]:
        raise OperationalError("INSERT", None, sqlite3.OperationalError("database or disk is full"))

    ledger.record_decisions = full  # type: ignore[method-assign]
    batcher = DecisionBatcher(deps)
    requests = [DecideRequest(customer_id=f"c-{i}", channel="web") for i in range(5)]

    async def go() -> list[BaseException | object]:
        return await asyncio.gather(*(batcher.decide(r) for r in requests), return_exceptions=True)

    results = asyncio.run(go())
    batcher.close()
    assert [type(r) for r in results] == [OperationalError] * 5
    assert all("database or disk is full" in str(r) for r in results)
    ledger.record_decisions = original  # type: ignore[method-assign]
    assert ledger.counts()["decisions"] == 1
    assert not ledger.pending  # nothing is left counted against caps


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


def _group(deps, rows: list[DecisionRow]) -> list[bool | BaseException]:  # noqa: ANN001
    """Every row committed as one group, as the decision batcher commits a batch: each row's
    result (written) or why it was refused."""
    stale, refused = deps.ledger.record_decisions_isolated(rows)
    why = {id(row): err for row, err in refused}
    return [why.get(id(r), not any(r is x for x in stale)) for r in rows]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_one_bad_row_fails_only_its_own_waiter(backend: str, request, tmp_path) -> None:  # noqa: ANN001
    """90 decisions committed as one group, 3 of them rows the database refuses (a customer id
    longer than its column on PostgreSQL; on SQLite, which does not check lengths, a decision
    id already recorded): those 3 waiters fail, naming why, and the other 87 are committed."""
    from nextbest.db import engine_for
    from nextbest.settings import Settings
    from tests.serving.conftest import real_deps

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    settings = Settings(home=tmp_path, ledger_url=url)
    deps = real_deps(settings, {})
    rows = [decision_row(f"c-{i}") for i in range(90)]
    if backend == "postgresql":
        bad = {10: "x" * 65, 45: "y" * 100, 89: "z" * 256}
        for i, cid in bad.items():
            rows[i] = decision_row(cid)
    else:
        bad = {10: None, 45: None, 89: None}
        for i in bad:
            deps.ledger.record_decision(rows[i])  # already recorded: a duplicate primary key
    results = _group(deps, rows)
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == sorted(bad), results[failed[0]] if failed else None
    for i in failed:
        assert isinstance(results[i], RowRejected)
        if backend == "postgresql":
            assert results[i].field == "customer_id"
            assert str(results[i]) == "customer_id: longer than 64 characters"
    assert all(results[i] is True for i in range(90) if i not in bad)
    logged = set(Ledger(engine_for(settings.ledger_db_url)).logs()["decision_id"])
    assert {r.decision_id for i, r in enumerate(rows) if i not in bad} <= logged
    assert len(logged) == (90 if backend == "sqlite" else 87)
