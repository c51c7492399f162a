"""Feature reads of concurrent decisions share one store call; a failure reaches each caller."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from serving.batching import FeatureBatcher
from serving.deps import FeatureReader


def _reader(calls: list[list[str]], fail: bool = False) -> FeatureReader:
    def read_online(
        store: Any, service: str, ids: list[str], now: Any = None
    ) -> list[dict[str, Any]]:
        calls.append(list(ids))
        if fail:
            raise ConnectionError("store down")
        return [{"customer_id": c, "plan": f"plan-of-{c}", "gone": None} for c in ids]

    return FeatureReader(None, read_online)


def test_concurrent_reads_share_a_call() -> None:
    calls: list[list[str]] = []
    batcher = FeatureBatcher(_reader(calls))

    async def go() -> list[dict]:
        return await asyncio.gather(*(batcher.read(c) for c in ["a", "b", "a", "c"]))

    rows = asyncio.run(go())
    assert calls == [["a", "b", "c"]]  # one call, duplicates read once
    assert [r["plan"] for r in rows] == ["plan-of-a", "plan-of-b", "plan-of-a", "plan-of-c"]
    assert all("gone" not in r for r in rows)  # nulls dropped: a missing field fails its rule


def test_a_failed_read_reaches_every_caller_and_backs_off() -> None:
    calls: list[list[str]] = []
    reader = _reader(calls, fail=True)
    batcher = FeatureBatcher(reader)

    async def go() -> list:
        return await asyncio.gather(batcher.read("a"), batcher.read("b"), return_exceptions=True)

    errors = asyncio.run(go())
    assert [str(e) for e in errors] == ["store down", "store down"]
    with pytest.raises(RuntimeError, match="unavailable, retrying soon"):
        reader.read("c")  # not retried on every request while the store is down
    assert len(calls) == 1


def test_reads_count_from_the_batchers_clock() -> None:
    """The decisions' clock (the replay's is the world's time) reaches the read."""
    seen: list[Any] = []

    def read_online(store: Any, service: str, ids: list[str], now: Any = None) -> list[dict]:
        seen.append(now)
        return [{"customer_id": c} for c in ids]

    at = datetime(2026, 4, 3, 18, 20, tzinfo=UTC)
    asyncio.run(FeatureBatcher(FeatureReader(None, read_online), clock=lambda: at).read("a"))
    asyncio.run(FeatureBatcher(FeatureReader(None, read_online)).read("a"))
    assert seen == [at, None]  # None: the wall clock
