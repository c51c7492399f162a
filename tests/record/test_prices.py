"""The price book: a show is charged the prices of the limits it draws on, while they hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nextbest.db import engine_for
from record.ledger import Ledger
from record.prices import PriceBook, load_prices, store_prices

T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)
COSTS = {"device_upgrade": 40.0, "data_addon": 0.0}


def test_charge_sums_the_limits_an_offer_draws_on() -> None:
    book = PriceBook(
        {("offer_stock", "device_upgrade"): 3.0, ("channel_capacity", "sms"): 0.5,
         ("budget", "money"): 0.1, ("offer_stock", "data_addon"): 7.0},
        COSTS,
    )  # fmt: skip
    assert book.charge("device_upgrade", "sms") == pytest.approx(3.0 + 0.5 + 0.1 * 40.0)
    assert book.charge("device_upgrade", "web") == pytest.approx(3.0 + 4.0)  # web has no price
    assert book.charge("data_addon", "email") == pytest.approx(7.0)  # costs nothing
    assert book.charge("streaming_bundle", "email") == 0.0
    assert not PriceBook({("budget", "money"): 0.0}, COSTS)  # all zero: nothing to subtract


def test_newest_price_in_force_wins(tmp_path: Path) -> None:
    ledger = Ledger(engine_for(f"sqlite:///{tmp_path / 'l.db'}"))
    day = timedelta(days=1)
    with ledger.engine.begin() as conn:
        store_prices(conn, "old", {("offer_stock", "device_upgrade"): 5.0,
                                   ("budget", "money"): 0.2}, T0, T0 + day, T0)  # fmt: skip
        store_prices(conn, "new", {("offer_stock", "device_upgrade"): 2.0},
                     T0, T0 + day, T0 + timedelta(hours=1))  # fmt: skip
        store_prices(conn, "later", {("offer_stock", "device_upgrade"): 9.0},
                     T0 + day, T0 + 2 * day, T0)  # fmt: skip
    book = load_prices(ledger.engine, COSTS, T0 + timedelta(hours=2))
    assert book.prices == {("offer_stock", "device_upgrade"): 2.0, ("budget", "money"): 0.2}
    assert load_prices(ledger.engine, COSTS, T0 + day).prices == {
        ("offer_stock", "device_upgrade"): 9.0
    }
    assert load_prices(ledger.engine, COSTS, T0 - day).prices == {}
