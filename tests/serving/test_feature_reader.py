"""The served feature read (``FeatureReader.read_many_within``, one per batch of decisions):
nulls dropped, a timeout instead of a hung store's wait, a circuit breaker while it fails;
and a batch of decisions reads its customers' features in one call."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from nextbest.breaker import Breaker, CircuitOpen
from serving.decide import DecideRequest
from serving.decision_batcher import DecisionBatcher
from serving.deps import Deps, FeatureReader


def _reader(calls: list[list[str]], fail: bool = False) -> FeatureReader:
    def read_online(
        store: Any, service: str, ids: list[str], now: Any = None
    ) -> list[dict[str, Any]]:
        calls.append(list(ids))
        if fail:
            raise ConnectionError("store down")
        return [{"customer_id": c, "plan": f"plan-of-{c}", "gone": None} for c in ids]

    return FeatureReader(None, read_online)


async def _read(reader: FeatureReader, cid: str) -> dict[str, Any]:
    """One read from the decider's thread, while the event loop goes on."""
    return (await asyncio.to_thread(reader.read_many_within, [cid]))[0]


def test_a_batch_of_decisions_reads_features_in_one_call(deps: Deps) -> None:
    calls: list[list[str]] = []
    deps.features = _reader(calls)
    cids = ["c-post", "c-pre", "c-post", "nobody"]  # "nobody": unknown to the graph, not read
    batcher = DecisionBatcher(deps)
    batcher.decide_now([DecideRequest(customer_id=c, channel="web") for c in cids])
    assert calls == [["c-post", "c-pre"]]  # one call, duplicates read once


def test_reads_drop_nulls() -> None:
    rows = _reader([]).read_many_within(["a", "b"])
    assert [r["plan"] for r in rows] == ["plan-of-a", "plan-of-b"]
    assert all("gone" not in r for r in rows)  # nulls dropped: a missing field fails its rule


def test_a_failed_read_reaches_every_caller_and_opens_the_circuit() -> None:
    calls: list[list[str]] = []
    reader = _reader(calls, fail=True)

    async def go() -> list:
        return await asyncio.gather(_read(reader, "a"), return_exceptions=True)

    errors = asyncio.run(go())
    assert [str(e) for e in errors] == ["store down"]
    assert reader.breaker.state == "closed"  # one failure: the store is tried again
    for c in ("c", "d"):
        with pytest.raises(ConnectionError, match="store down"):
            reader.read(c)
    with pytest.raises(CircuitOpen, match="features circuit open after ConnectionError"):
        reader.read("e")  # not retried on every request while the store is down
    assert len(calls) == 3


class HungStore:
    """``read_online`` that never answers until released (a Redis that accepts and hangs)."""

    def __init__(self) -> None:
        self.release, self.calls = threading.Event(), 0

    def __call__(self, store: Any, service: str, ids: list[str], now: Any = None) -> list[dict]:
        self.calls += 1
        if not self.release.wait(10):
            raise TimeoutError("hung")
        return [{"customer_id": c, "plan": "prepaid"} for c in ids]


def test_a_hung_store_never_holds_the_event_loop() -> None:
    """Before: the batch was read on the loop, so a hung store froze every request of the
    worker (and the loop ticked not once until the store answered)."""
    hung = HungStore()
    breaker = Breaker("features", failures=2, reset_seconds=0.3)
    reader = FeatureReader(None, hung, breaker=breaker, timeout=0.05)

    async def go() -> tuple[list, int, list[float]]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        waited, results = [], []
        for cid in ("a", "b", "c", "d"):
            t0 = time.perf_counter()
            results.append(*(await asyncio.gather(_read(reader, cid), return_exceptions=True)))
            waited.append(time.perf_counter() - t0)
        ticker.cancel()
        return results, ticks, waited

    try:
        results, ticks, waited = asyncio.run(go())
    finally:
        hung.release.set()
    assert [type(r).__name__ for r in results] == [
        "TimeoutError",
        "TimeoutError",  # two timeouts in a row open the circuit ...
        "CircuitOpen",  # ... and the next decisions fall back at once, without a call
        "CircuitOpen",
    ]
    assert str(results[0]) == "no answer within 50 ms"
    assert hung.calls == 2
    assert waited[0] < 2 and waited[1] < 2  # the timeout, not the store's hang
    assert max(waited[2:]) < 0.01
    assert ticks >= 10  # the loop went on meanwhile (a 5 ms ticker over ~100 ms)


def test_the_half_open_probe_runs_in_the_background_and_closes_the_circuit() -> None:
    hung = HungStore()
    breaker = Breaker("features", failures=1, reset_seconds=0.05)
    reader = FeatureReader(None, hung, breaker=breaker, timeout=0.05)

    async def read(cid: str) -> Any:
        return (await asyncio.gather(_read(reader, cid), return_exceptions=True))[0]

    async def go() -> list:
        first = await read("a")  # times out: open
        await asyncio.sleep(0.06)
        hung.release.set()  # the store is back
        t0 = time.perf_counter()
        probing = await read("b")  # the probe starts in the background; this one falls back
        waited = time.perf_counter() - t0
        for _ in range(100):
            if breaker.state == "closed":
                break
            await asyncio.sleep(0.01)
        return [first, probing, waited, await read("c")]

    first, probing, waited, after = asyncio.run(go())
    assert isinstance(first, TimeoutError)
    assert isinstance(probing, CircuitOpen) and "half-open, probing" in str(probing)
    assert waited < 0.01
    assert after == {"customer_id": "c", "plan": "prepaid"}
    assert breaker.state == "closed" and hung.calls == 3


def test_reads_count_from_the_decisions_clock(deps: Deps) -> None:
    """The decisions' clock (the replay's is the world's time) reaches the served read."""
    seen: list[Any] = []

    def read_online(store: Any, service: str, ids: list[str], now: Any = None) -> list[dict]:
        seen.append(now)
        return [{"customer_id": c} for c in ids]

    at = datetime(2026, 4, 3, 18, 20, tzinfo=UTC)
    deps.features, deps.clock = FeatureReader(None, read_online), lambda: at
    batcher = DecisionBatcher(deps)

    async def go() -> None:
        await batcher.decide(DecideRequest(customer_id="c-post", channel="web"))

    asyncio.run(go())
    batcher.close()
    assert seen == [at]
