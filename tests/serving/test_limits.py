"""limits.yaml: each bad file fails with one line naming the field."""

from __future__ import annotations

import pytest

from offers.catalog import load_catalog
from serving.limits import LimitsError, parse_limits

GOOD = """
offers: {device_upgrade: {stock: 1500}}
channels: {call_centre: {capacity_per_day: 500}}
budget: {money: 20000}
period: {valid_from: 2026-01-01T00:00:00Z, valid_until: 2026-01-08T00:00:00Z}
"""


def test_good_file() -> None:
    limits = parse_limits(GOOD, load_catalog())
    assert limits.offers["device_upgrade"].stock == 1500
    assert limits.channels["call_centre"].capacity_per_day == 500
    assert limits.budget is not None and limits.budget.money == 20000


BAD = [  # (file, the start of its one-line error)
    ("offers: {device_upgrade: {stock: -3}}",
     "limits.offers.device_upgrade.stock: must be >= 0, got -3"),
    ("offers: {device_discount: {stock: 3}}", "limits.offers.device_discount: unknown offer"),
    ("channels: {fax: {capacity_per_day: 3}}", "limits.channels.fax: unknown channel"),
    ("channels: {sms: {capacity_per_day: -1}}",
     "limits.channels.sms.capacity_per_day: must be >= 0, got -1"),
    ("channels: {sms: {capacity_per_day: lots}}",
     "limits.channels.sms.capacity_per_day: Input should be a valid integer"),
    ("budget: {money: -5}", "limits.budget.money: must be >= 0, got -5"),
    ("budget: {money: 5, currency: EUR}", "limits.budget.currency: unknown key, got 'EUR'"),
    ("stocks: {}", "limits.stocks: unknown key"),
    ("offers: {device_upgrade: {stok: 3}}", "limits.offers.device_upgrade.stok: unknown key"),
    ("period: {valid_from: 2026-01-02T00:00:00Z, valid_until: 2026-01-01T00:00:00Z}",
     "limits.period: valid_until must be after valid_from"),
    ("period: {valid_from: 2026-01-02T00:00:00, valid_until: 2026-01-03T00:00:00Z}",
     "limits.period.valid_from: Input should have timezone info"),
    ("- 1", "limits: expected a mapping, got list"),
    ("offers: [", "limits: invalid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "error"), BAD)
def test_bad_file_names_the_field(text: str, error: str) -> None:
    with pytest.raises(LimitsError) as exc:
        parse_limits(text, load_catalog())
    assert str(exc.value).startswith(error)
    assert "\n" not in str(exc.value)
