"""Group commit for the decision ledger: every decision is committed before it is answered,
but decisions arriving together share one transaction (one fsync), and the commit runs in a
thread so the event loop keeps deciding meanwhile.

With ``synchronous=FULL`` a SQLite commit costs about a millisecond of fsync; paying it once per
request would cap a worker near 1k decisions/s and stall the loop. Sequential callers still
get one commit each, so nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import asyncio

from experiments.ledger import DecisionRow, Ledger


class GroupWriter:
    """``await writer.put(row)`` returns once ``row`` is committed (or raises why not)."""

    def __init__(self, ledger: Ledger, max_batch: int = 256, inline: bool = False) -> None:
        """``inline``: commit on the loop itself, for a commit cheaper than a thread hop
        (SQLite with ``synchronous=NORMAL``: no fsync per commit)."""
        self.ledger, self.max_batch, self.inline = ledger, max_batch, inline
        self._pending: list[tuple[DecisionRow, asyncio.Future[None]]] = []
        self._flushing = False

    async def put(self, row: DecisionRow) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((row, fut))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    rows = [r for r, _ in batch]
                    if self.inline:
                        self.ledger.record_decisions(rows)
                    else:
                        await asyncio.to_thread(self.ledger.record_decisions, rows)
                except Exception as exc:  # noqa: BLE001 - each waiter gets the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._flushing = False
