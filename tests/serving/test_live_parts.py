"""The pipeline over the real Feast store (H3) and its real-time ingest: no stand-ins."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from nextbest.settings import Settings
from serving import actions
from serving.decide import DecideRequest, decide
from serving.deps import load_deps


@pytest.mark.slow
def test_decide_and_ingest_on_a_real_feature_store(tmp_path: Path) -> None:
    from benchmarks.decide import prepare_features

    settings = Settings(home=tmp_path).ensure_dirs()
    prepare_features(settings, customers=20)
    deps = load_deps(settings, models=None, bandit=None)
    assert "features" not in deps.missing and "ingest" not in deps.missing, deps.missing

    r = decide(DecideRequest(customer_id="bench000003", channel="web", max_offers=3), deps)
    assert not any(x.startswith("features") for x in r.reasons), r.reasons
    row = deps.ledger.decision(r.decision_id)
    assert row.scores["features"]["plan"]  # the profile the decision saw is logged with it

    ev = {
        "ts": datetime.now(UTC).isoformat(),
        "channel": "app",
        "event_type": "basket_add",
        "login_id": "live-user",
        "product_id": "data_10gb",
        "value": 5.0,
    }
    res = actions.ingest(ev, deps)
    assert res["pushed"] is True and res["basket_items"] == 1, res
    live = deps.features.read(res["customer_id"])
    assert live["basket_items"] == 1  # pushed online, read back by the decision path
