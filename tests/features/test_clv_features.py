"""profile_v2 carries the customer's value: ``clv_12m`` and ``p_alive`` defined once in the
``customer_value`` view, written by ``training.clv_world`` and read online through Feast."""

from __future__ import annotations

import contextlib
import sys
import warnings
from datetime import timedelta

import pandas as pd
import pytest

from features.store import read_online

pytestmark = pytest.mark.slow


def test_profile_v2_is_profile_v1_plus_customer_value() -> None:
    from features.repo.feature_services import profile_v1, profile_v2

    def names(fs: object) -> list[str]:
        return [f.name for p in fs.feature_view_projections for f in p.features]

    v1, v2 = names(profile_v1), names(profile_v2)
    assert v2[: len(v1)] == v1
    assert v2[len(v1) :] == ["clv_12m", "p_alive", "expected_purchases_12m", "value_tier"]


def test_clv_reaches_the_online_profile(feature_home) -> None:  # noqa: ANN001
    from features.repo.data_sources import VALUE_PATH
    from training.clv_world import value_rows

    store, settings = feature_home.store, feature_home.settings
    ids = pd.read_parquet(settings.feature_dir / "snapshots/customer_features.parquet")[
        "customer_id"
    ].unique()[:5]
    predictions = pd.DataFrame(
        {
            "customer_id": ids,
            "expected_purchases": [4.0, 3.0, 2.0, 1.0, 0.5],
            "expected_value": [500.0, 300.0, 200.0, 100.0, 50.0],
            "p_alive": [0.99, 0.9, 0.8, 0.5, 0.1],
        }
    )
    at = pd.Timestamp(feature_home.build["snapshots"][-1]).tz_localize(None)
    rows = value_rows(predictions, at)
    assert rows["value_tier"].tolist() == ["top", "middle", "low", "low", "low"]  # 20%, 30%, 50%
    path = settings.feature_dir / VALUE_PATH
    rows.to_parquet(path, index=False)
    end = (at + timedelta(days=2)).tz_localize("UTC").to_pydatetime()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        store.materialize(end - timedelta(days=30), end, feature_views=["customer_value"])
    got = read_online(store, "profile_v2", [*ids[:2], "nobody"])
    assert got[0]["clv_12m"] == pytest.approx(500.0) and got[0]["p_alive"] == pytest.approx(0.99)
    assert got[1]["value_tier"] == "middle"
    assert got[2]["clv_12m"] is None and got[2]["p_alive"] is None  # no value: the flat figure
    assert "plan" in got[0] and "basket_abandoned" in got[0]  # profile_v1 is still all there
    from features.store import unified_profile

    shown = unified_profile(settings, ids[0], store=store)["features"]  # GET /profile's body
    assert shown["clv_12m"] == pytest.approx(500.0) and shown["value_tier"] == "top"
