"""`nextbest demo` end to end on a small world: every stage runs for real (Feast, MLflow,
a `bentoml serve` subprocess, the replay, the report) and leaves its outputs where the
README says."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextbest.demo import MARKER, DemoError, fresh_home, run_demo
from nextbest.settings import Settings


@pytest.mark.slow
def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", customers=300, days=90)
    out = run_demo(settings, visits=40, replay_visits=200)

    assert out["identity"]["precision"] > 0.95
    assert out["features"]["online_rows"] > 0
    assert out["models"]["churn"]["promoted"] and out["models"]["propensity"]["promoted"]
    audiences = out["audiences"]  # issue 18: segments of the base, the example group's size
    assert audiences["segments"]["rfm"] >= 4 and audiences["segments"]["clusters"] == 5
    assert audiences["audience"]["customers"] >= 250 and audiences["audience"]["members"] >= 0
    assert set(out["models"]["clv"]["tiers"]) == {"top", "middle", "low"}, out["models"]["clv"]
    serving = out["serving"]
    assert serving["decisions"] == 40 and set(serving["by_channel"]) >= {"web", "app", "email"}
    # one customer's dialog through the real service and runner: banner, e-mail, SMS, exit
    assert serving["journey_customer"] and serving["journey_steps"] >= 7, serving
    assert serving["journey_status"] == "goal"  # the store purchase ended it
    basket = out["journeys"]["abandoned_basket"]
    assert basket["n_treated"] > 0 and basket["n_holdout"] > 0
    assert basket["ci_low"] <= basket["measured_lift"] <= basket["ci_high"]
    assert Path(out["replay"]["plot"]).is_file()
    assert Path(out["report"]["html"]).is_file() and Path(out["report"]["json"]).is_file()
    assert (settings.home / MARKER).is_file()


def test_demo_refuses_to_wipe_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(DemoError, match=r"^home: .* is not empty and was not made by nextbest"):
        fresh_home(Settings(home=tmp_path))
    assert (tmp_path / "thesis.tex").exists()


def test_demo_wipes_its_own_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h")
    fresh_home(settings)
    (settings.home / "ledger.db").write_text("old run")
    fresh_home(settings)
    assert not (settings.home / "ledger.db").exists() and (settings.home / MARKER).exists()
