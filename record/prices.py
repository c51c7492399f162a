"""The limits' prices in force: what /decide subtracts from an offer's value for the stock,
channel capacity and budget a show of it would draw on.

An outbound run stores the dual price of each of its limits (``record.tables.limit_prices``)
with the period they hold; the newest run's price of each limit in force now applies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from record.tables import limit_prices, utc

log = logging.getLogger("nextbest.prices")


@dataclass(frozen=True)
class PriceBook:
    """Prices by (kind, key) and the catalogue's offer costs (what the budget counts)."""

    prices: Mapping[tuple[str, str], float] = field(default_factory=dict)
    costs: Mapping[str, float] = field(default_factory=dict)

    def charge(self, offer_id: str, channel: str) -> float:
        """Sum over the limits the offer consumes of price x consumption: a unit of its stock,
        a slot of the channel, its cost against the budget. The same consumption the run's LP
        counted, so a visit pays what the run would have."""
        p = self.prices
        return (
            p.get(("offer_stock", offer_id), 0.0)
            + p.get(("channel_capacity", channel), 0.0)
            + p.get(("budget", "money"), 0.0) * self.costs.get(offer_id, 0.0)
        )

    def __bool__(self) -> bool:
        return any(v > 0 for v in self.prices.values())


def store_prices(
    conn: Connection,
    run_id: str,
    prices: Mapping[tuple[str, str], float],
    valid_from: datetime,
    valid_until: datetime,
    created_at: datetime,
) -> None:
    """The run's prices, in the caller's transaction (with the run's messages)."""
    rows = [
        {"run_id": run_id, "kind": kind, "key": key, "price": float(price),
         "valid_from": valid_from, "valid_until": valid_until, "created_at": created_at}
        for (kind, key), price in prices.items()
    ]  # fmt: skip
    if rows:
        conn.execute(insert(limit_prices), rows)


def load_prices(engine: Engine, costs: Mapping[str, float], at: datetime) -> PriceBook:
    """The newest stored price of each limit whose period holds ``at``."""
    t = limit_prices.c
    q = (
        select(t.kind, t.key, t.price, t.created_at)
        .where(t.valid_from <= at, t.valid_until > at)
        .order_by(t.created_at, t.run_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    prices = {(kind, key): float(price) for kind, key, price, _ in rows}  # the newest wins
    return PriceBook(prices, dict(costs))


class PriceRefresher:
    """Reloads the price book every ``every`` seconds in a thread of its own, off the event
    loop, and hands it to ``apply`` (the service sets ``deps.prices``). A failed load keeps
    the last book and is logged; the next round retries."""

    def __init__(
        self,
        engine: Engine,
        costs: Mapping[str, float],
        apply: Callable[[PriceBook], Any],
        clock: Callable[[], datetime],
        every: float = 60.0,
    ) -> None:
        self.engine, self.costs, self.apply, self.clock = engine, costs, apply, clock
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> PriceBook:
        book = load_prices(self.engine, self.costs, utc(self.clock()))
        self.apply(book)
        return book

    def start(self) -> PriceRefresher:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="limit-prices", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the last book stays; the next round retries
                log.warning("limit prices not refreshed", exc_info=True)
            if self._stop.wait(self.every):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
