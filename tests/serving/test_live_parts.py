"""The pipeline over the real Feast store (H3) and its real-time ingest: no stand-ins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nextbest.settings import Settings
from serving import actions
from serving.decide import DecideRequest, decide
from serving.deps import Deps, load_deps


@pytest.mark.slow
def test_decide_and_ingest_on_a_real_feature_store(tmp_path: Path) -> None:
    from benchmarks.decide import prepare_features
    from features.ingest import REALTIME_FIELDS

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
    # the basket's age counts from the decision's time (the replay's is the world's), so a
    # decision an hour and a half later sees it abandoned and one ten minutes later does not
    at = datetime.fromisoformat(ev["ts"]).replace(microsecond=0)
    later = deps.features.read(res["customer_id"], now=at + timedelta(minutes=90))
    assert later["basket_minutes_since_change"] == pytest.approx(90.0, abs=1 / 60)
    assert later["basket_abandoned"] is True
    soon = deps.features.read(res["customer_id"], now=at + timedelta(minutes=10))
    assert soon["basket_minutes_since_change"] == pytest.approx(10.0, abs=1 / 60)
    assert soon["basket_abandoned"] is False
    deps.clock = lambda: at + timedelta(minutes=90)
    r = decide(DecideRequest(login_id="live-user", channel="app"), deps)
    seen = deps.ledger.decision(r.decision_id).scores["features"]
    assert seen["basket_minutes_since_change"] == pytest.approx(90.0, abs=1 / 60)

    erased = actions.erase(actions.EraseRequest(customer_id=res["customer_id"]), deps)
    features = erased["features"]
    # a customer born live has one online row: the real-time view, one row per feature
    assert features == {"online": len(REALTIME_FIELDS), "offline": 0, "event_log": 1}, erased
    assert "basket_items" not in deps.features.read(res["customer_id"])
    erased = actions.erase(actions.EraseRequest(customer_id="bench000003"), deps)
    assert erased["features"]["offline"] > 0 and erased["ledger"]["decisions"] == 1, erased
    assert "plan" not in deps.features.read("bench000003")


def test_erase_reports_a_failing_feature_store(deps: Deps) -> None:
    """Redis refusing connections: the result says so (no 500), the rest is still erased."""
    deps.settings = deps.settings.model_copy(
        update={"online_store": "redis", "redis_url": "127.0.0.1:1"}
    )
    decide(DecideRequest(customer_id="c-post", channel="web"), deps)
    erased = actions.erase(actions.EraseRequest(customer_id="c-post"), deps)
    assert erased["ledger"]["decisions"] == 1
    assert erased["features"].startswith("failed: ConnectionError"), erased
