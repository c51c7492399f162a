"""Group commit: concurrent decisions are all committed before their callers resume."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from experiments.ledger import DecisionRow, Ledger, now
from serving.writer import GroupWriter


def _row() -> DecisionRow:
    return DecisionRow(
        decision_id=uuid.uuid4().hex,
        ts=now(),
        customer_id="c",
        channel="web",
        experiment="e",
        arm="treatment",
        offer_id="no_offer",
        propensity=1.0,
    )


def test_concurrent_puts_are_committed_in_groups(deps) -> None:  # noqa: ANN001
    ledger: Ledger = deps.ledger
    calls: list[int] = []
    original = ledger.record_decisions

    def counting(rows: list[DecisionRow]) -> None:
        calls.append(len(rows))
        original(rows)

    ledger.record_decisions = counting  # type: ignore[method-assign]
    writer = GroupWriter(ledger)
    rows = [_row() for _ in range(50)]

    async def go() -> None:
        await asyncio.gather(*(writer.put(r) for r in rows))

    asyncio.run(go())
    assert sum(calls) == 50 and len(calls) < 50  # grouped
    assert ledger.counts()["decisions"] == 50


def test_a_failed_commit_reaches_every_waiter(deps) -> None:  # noqa: ANN001
    writer = GroupWriter(deps.ledger)
    row = _row()

    async def go() -> None:
        await writer.put(row)
        await asyncio.gather(writer.put(row), writer.put(_row()))  # duplicate primary key

    with pytest.raises(Exception, match="UNIQUE constraint failed: decisions.decision_id"):
        asyncio.run(go())
    assert deps.ledger.counts()["decisions"] == 1  # the whole group rolled back, none acked
