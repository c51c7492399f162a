"""Micro-batching of online feature reads across concurrent decisions.

Decisions that arrive in the same event-loop turn share one read of ``profile_v1``: on SQLite
one query over Feast's tables for all of them (``features.online_read.SqliteViews``), on other
online stores one query per feature view. Measured through ``read_online`` on SQLite: ~40-46 us
for one customer, ~31 us each in a read of eight. A lone request is read at once, on its own.

Each batch is read in a thread (``FeatureReader.read_many_async``) with a timeout and behind the
reader's circuit breaker: a hung or dead store never holds the event loop, and while it fails
every decision falls back at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from serving.deps import FeatureReader


class FeatureBatcher:
    """``await batcher.read(customer_id)``: the customer's features from a shared read."""

    def __init__(
        self,
        reader: FeatureReader,
        max_batch: int = 64,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``clock``: the decisions' time (``Deps.clock``); None reads at the wall clock."""
        self.reader, self.max_batch, self.clock = reader, max_batch, clock
        self._pending: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self._scheduled = False
        self._reads: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references

    async def read(self, customer_id: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((customer_id, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after the requests already queued in this turn
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            task = asyncio.get_running_loop().create_task(self._read(batch))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)

    async def _read(self, batch: list[tuple[str, asyncio.Future[dict[str, Any]]]]) -> None:
        ids = list(dict.fromkeys(c for c, _ in batch))
        try:
            now = self.clock() if self.clock else None
            rows = await self.reader.read_many_async(ids, now=now)
        except Exception as exc:  # noqa: BLE001 - each decision falls back with the reason
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        by_id = dict(zip(ids, rows, strict=True))
        for cid, fut in batch:
            if not fut.done():
                fut.set_result(by_id[cid])
