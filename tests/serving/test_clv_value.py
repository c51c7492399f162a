"""Arbitration values retention by the churn lever times the customer's CLV (``clv_12m``),
and by the flat figure (the offer's value) only when the customer's value is unknown."""

from __future__ import annotations

import math

import pytest

from offers.catalog import load_catalog
from serving import policy


def test_retention_is_worth_churn_risk_times_clv() -> None:
    retention = load_catalog().get("retention_discount")
    flat = policy.incremental_value(retention, 0.2, 0.1, 0.5, 1.0)
    # unknown value (no row in customer_value, or NaN): exactly the old flat figure
    assert flat == pytest.approx(0.1 * retention.value * 1.5 - 0.2 * retention.cost)
    assert policy.incremental_value(retention, 0.2, 0.1, 0.5, 1.0, None) == flat
    assert policy.incremental_value(retention, 0.2, 0.1, 0.5, 1.0, math.nan) == flat
    rich = policy.incremental_value(retention, 0.2, 0.1, 0.5, 1.0, 2000.0)
    poor = policy.incremental_value(retention, 0.2, 0.1, 0.5, 1.0, 10.0)
    assert rich == pytest.approx(0.1 * (retention.value + 0.5 * 2000.0) - 0.2 * retention.cost)
    assert poor < flat < rich
    # no churn risk or no lever: what the customer is worth does not matter
    assert policy.incremental_value(retention, 0.2, 0.1, 0.0, 1.0, 2000.0) == pytest.approx(
        policy.incremental_value(retention, 0.2, 0.1, 0.0, 1.0, 10.0)
    )
    assert policy.incremental_value(retention, 0.2, 0.1, 0.5, 0.0, 2000.0) == pytest.approx(
        0.1 * retention.value - 0.2 * retention.cost
    )
