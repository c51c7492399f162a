"""The service's own decision batcher: /decide requests that arrive while a batch is being
decided wait together, and the next batch decides all of them at once (``plan_many``) and
commits their rows in one transaction.

Everything that touches a store (identity lookups, the feature read, journey banners, the
contact history, the commit) runs in one decider thread, one batch at a time, never on the
event loop: a hung PostgreSQL holds that thread until ``nextbest.db.bound_silence`` fails its
query, while the loop keeps answering /healthz and queuing decisions. A lone request is
decided at once, alone; under load a batch is as large as what queued while the last one ran.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from serving import decide as pipeline
from serving.decide import DecideRequest, DecideResponse, Outcome
from serving.deps import Deps
from serving.stages import StageTimes

log = logging.getLogger("nextbest.batcher")


class DecisionBatcher:
    """``await batcher.decide(request)``: the committed decision, decided in a batch with the
    requests queued meanwhile (at most ``max_batch``). ``observe(times, size)`` is told each
    batch's stage times and size (the Prometheus histograms)."""

    def __init__(
        self,
        deps: Deps,
        max_batch: int = 256,
        observe: Callable[[StageTimes, int], None] | None = None,
    ) -> None:
        self.deps, self.max_batch, self.observe = deps, max_batch, observe
        # one entry per caller: a /decide/batch call's requests are never split between batches
        self._queue: list[list[tuple[DecideRequest, asyncio.Future[DecideResponse]]]] = []
        self._draining: asyncio.Task[None] | None = None  # held: the loop keeps weak references
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="decider")

    async def decide(self, request: DecideRequest) -> DecideResponse:
        return (await self.decide_all([request]))[0]

    async def decide_all(self, requests: Sequence[DecideRequest]) -> list[DecideResponse]:
        """Each request's decision, in order, all in one batch (one transaction: a ledger
        failure logs none of them); the first failure is raised (a ledger error, a row
        refused), after every request's outcome is known."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in requests]
        self._queue.append(list(zip(requests, futures, strict=True)))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        done = await asyncio.gather(*futures, return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        return done  # type: ignore[return-value]

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch = self._queue.pop(0)  # callers whole, up to max_batch (or one larger)
                while self._queue and len(batch) + len(self._queue[0]) <= self.max_batch:
                    batch += self._queue.pop(0)
                requests = [r for r, _ in batch]
                try:
                    outcomes = await loop.run_in_executor(self._thread, self.decide_now, requests)
                except Exception as exc:  # noqa: BLE001 - every waiter gets the failure
                    outcomes = [exc] * len(batch)
                for (_, fut), outcome in zip(batch, outcomes, strict=True):
                    if fut.done():  # its caller gave up (a timeout)
                        continue
                    if isinstance(outcome, Exception):
                        fut.set_exception(outcome)
                    else:
                        fut.set_result(outcome)
        finally:
            self._draining = None

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def decide_now(self, requests: Sequence[DecideRequest]) -> list[Outcome]:
        """One batch, in the calling thread (``serving.decide.decide_outcomes``): identities
        verified, features read once within the reader's timeout, banners claimed, planned
        together and committed in one transaction. A request refused on its own (an
        undeclared campaign, a row the database refuses) gets its error; the others are
        decided. A store failure raises for the whole batch."""
        times = StageTimes()
        outcomes = pipeline.decide_outcomes(
            requests, self.deps, verify=True, within=True, isolate=True, times=times
        )
        if self.observe is not None:
            self.observe(times, len(requests))
        return outcomes
