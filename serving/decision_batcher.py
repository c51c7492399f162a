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
from dataclasses import dataclass

from pydantic import ValidationError

from record.ledger import LedgerError
from record.ledger_pending import MAX_PLANS
from record.tables import DecisionRow
from serving import decide as pipeline
from serving import journey_banners
from serving.decide import DecideRequest, DecideResponse, Known, Scope, with_banner
from serving.deps import Deps
from serving.stages import StageTimes

log = logging.getLogger("nextbest.batcher")
Outcome = DecideResponse | Exception  # one request's answer, or why it has none


@dataclass
class _Visit:
    """One request on its way through a batch: what is known, its banner's scope."""

    request: DecideRequest
    known: Known
    scope: Scope | None = None


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
        """One batch, in the calling thread: identities verified, features read once, banners
        claimed, then planned together and committed in one transaction. A request refused on
        its own (an undeclared campaign, a row the database refuses) gets its error; the others
        are decided. A store failure raises for the whole batch."""
        times = StageTimes()
        outcomes: list[Outcome | None] = [None] * len(requests)
        with times("identity"):
            visits = self._identify(requests)
        with times("features"):
            self._read_features(visits)
        with times("eligibility"):  # banners are read where the contact history is
            for visit in visits:
                self._banner(visit)
        todo = []
        for i, visit in enumerate(visits):
            try:
                pipeline.experiment_of(visit.request, self.deps)  # the 400 of this one alone
            except ValidationError as exc:
                outcomes[i] = exc
            else:
                todo.append(i)
        for _ in range(MAX_PLANS):
            if not todo:
                break
            todo = self._plan_and_commit([visits[i] for i in todo], todo, outcomes, times)
        for i in todo:
            cid = visits[i].known.customer_id
            outcomes[i] = LedgerError(
                f"customer {cid}: history kept changing over {MAX_PLANS} plans"
            )
        if self.observe is not None:
            self.observe(times, len(requests))
        return [o if o is not None else LedgerError("not decided") for o in outcomes]

    def _identify(self, requests: Sequence[DecideRequest]) -> list[_Visit]:
        """Every request's customer, the identity graph asked once for the batch."""
        known = [Known(reasons=[]) for _ in requests]
        pipeline.resolve_many(requests, self.deps, known, verify=True)
        return [_Visit(r, k) for r, k in zip(requests, known, strict=True)]

    def _read_features(self, visits: list[_Visit]) -> None:
        """One read for every known customer of the batch; a failure is each one's reason."""
        wanted = [v for v in visits if v.known.customer_id is not None]
        if not wanted:
            return
        reader = self.deps.features
        if reader is None:
            why = f"features: {self.deps.missing.get('features', 'unavailable')}"
            for v in wanted:
                v.known.reasons.append(why)
            return
        ids = list(dict.fromkeys(v.known.customer_id for v in wanted))
        try:
            # with the reader's timeout and circuit breaker, as every served read
            rows = reader.read_many_within(ids, now=self.deps.clock())
        except Exception as exc:  # noqa: BLE001 - a fallback decision, with the reason
            for v in wanted:
                v.known.reasons.append(f"features: {type(exc).__name__}: {exc}")
            return
        by_id = dict(zip(ids, rows, strict=True))
        for v in wanted:
            v.known.features = by_id[v.known.customer_id]

    def _banner(self, visit: _Visit) -> None:
        """A journey's banner waiting for this visit, claimed: the visit becomes its step."""
        cid, channel = visit.known.customer_id, visit.request.channel
        if cid is None or not journey_banners.possible(self.deps, channel):
            return
        banner = journey_banners.take(cid, channel, self.deps)
        visit.request, visit.scope = with_banner(visit.request, banner)

    def _plan_and_commit(
        self, visits: list[_Visit], where: list[int], outcomes: list[Outcome | None],
        times: StageTimes,
    ) -> list[int]:  # fmt: skip
        """Plan ``visits`` together and commit their rows at once; the indices (of
        ``where``) whose plans went stale are returned, to be planned again."""
        plans = pipeline.plan_many(
            [v.request for v in visits],
            self.deps,
            known=[v.known for v in visits],
            scopes=[v.scope for v in visits],
            times=times,
        )
        rows: list[DecisionRow] = [row for _, row in plans]
        ledger = self.deps.ledger
        with times("ledger"):
            for row in rows:
                ledger.pending.hold(row)  # other plans of this process count it meanwhile
            try:
                stale, refused = ledger.record_decisions_isolated(rows)
            except Exception:
                ledger.pending.release(rows, failed=rows)
                raise
            ledger.pending.release(rows, failed=stale + [r for r, _ in refused])
        why = {id(row): err for row, err in refused}
        stale_ids = {id(row) for row in stale}
        again = []
        for i, (response, row) in zip(where, plans, strict=True):
            if id(row) in stale_ids:
                again.append(i)
            else:
                outcomes[i] = why.get(id(row), response)
        return again
