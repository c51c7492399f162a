"""The world's campaign response lands inside what users report (issue 13), and the check bites."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nextbest.cli import app
from offers.catalog import load_catalog
from simulator.calibration import (
    CALENDAR_MEAN_UPLIFT,
    COMEBACK_NO_CONTACT,
    EMAIL_TREATED_CONVERSION,
    INTENT_OVER_CALENDAR,
    calibration,
)
from simulator.campaigns import CAMPAIGN_CHANNELS
from simulator.comebacks import comeback_rate
from simulator.world import World


@pytest.fixture(scope="module")
def cal(large_world: World) -> dict:
    return calibration(large_world)


def test_default_sized_world_meets_every_reported_target(cal: dict) -> None:
    failed = {k: v for k, v in cal["targets"].items() if not v["pass"]}
    assert cal["pass"] and not failed, failed
    email = cal["by_channel"]["email"]
    low, high = EMAIL_TREATED_CONVERSION
    assert low <= email["treated_conversion"] <= high
    assert 0 < cal["by_trigger"]["calendar"]["mean_true_uplift"] < CALENDAR_MEAN_UPLIFT[1]
    ratio = (
        cal["by_trigger"]["intent"]["mean_true_uplift"]
        / cal["by_trigger"]["calendar"]["mean_true_uplift"]
    )
    assert INTENT_OVER_CALENDAR[0] <= ratio <= INTENT_OVER_CALENDAR[1]
    assert COMEBACK_NO_CONTACT[0] <= cal["comeback_rate"] <= COMEBACK_NO_CONTACT[1]


def test_table_has_every_offer_channel_and_trigger(cal: dict, large_world: World) -> None:
    assert set(cal["by_offer"]) == {o.id for o in load_catalog().offers if o.product_id}
    assert set(cal["by_channel"]) == set(CAMPAIGN_CHANNELS)
    assert set(cal["by_trigger"]) == {"calendar", "intent"}
    ex = large_world.exposures
    assert sum(r["n"] for r in cal["by_offer"].values()) == len(ex)
    assert cal["by_trigger"]["calendar"]["n"] == len(ex)
    for part in ("by_offer", "by_channel", "by_trigger"):
        for name, row in cal[part].items():
            assert row["mean_true_uplift"] == pytest.approx(
                row["treated_conversion"] - row["untreated_conversion"], abs=2e-5
            ), (part, name)
    # the comeback rate is the analyst's figure from events alone
    rate = comeback_rate(large_world.events)["comeback_rate"]
    assert cal["comeback_rate"] == pytest.approx(rate, abs=1e-5)


def test_heterogeneity_survives_calibration(cal: dict, large_world: World) -> None:
    """Some exposures lose (the contact-averse on intrusive channels), some gain far more than
    the mean, and one offer does about nothing."""
    ex = large_world.exposures
    up = (ex.true_p_treated - ex.true_p_untreated).to_numpy()
    averse = large_world.people.set_index("person_id").contact_aversion.loc[ex.true_person_id]
    pushy = ex.channel.isin(["sms", "call_centre"]).to_numpy()
    high = averse.to_numpy() > 0.7
    assert up[pushy & high].mean() < 0 < up[~pushy].mean()
    assert cal["targets"]["negative_uplift_share"]["pass"]
    assert cal["targets"]["top_decile_over_mean"]["value"] >= 3
    assert min(abs(r["mean_true_uplift"]) for r in cal["by_offer"].values()) < 0.0025


def test_a_generous_world_fails_the_targets(large_world: World) -> None:
    """The check can fail: the same exposures with a 5-point uplift added (the old world's
    size) fail the uplift targets and nothing else changes."""
    ex = large_world.exposures.copy()
    ex["true_p_treated"] = np.minimum(ex["true_p_untreated"] + 0.05, 1.0)
    out = calibration(dataclasses.replace(large_world, exposures=ex))
    assert not out["pass"]
    failed = {k for k, v in out["targets"].items() if not v["pass"]}
    assert {"calendar_mean_uplift", "email_mean_uplift", "intent_over_calendar"} <= failed
    assert out["targets"]["comeback_no_contact"]["pass"]


def test_a_tiny_world_reports_what_it_cannot_measure() -> None:
    """20 days hold no 30-day basket window: the intent row is empty and fails, no crash."""
    from simulator.world import build_world

    out = calibration(build_world(60, 20, 1))
    assert out["by_trigger"]["intent"]["n"] == 0
    assert out["comeback_rate"] is None
    assert not out["targets"]["comeback_no_contact"]["pass"]
    assert not out["targets"]["intent_over_calendar"]["pass"] and not out["pass"]
    json.dumps(out, allow_nan=False)  # no NaN reaches the CLI's JSON


def test_cli_prints_the_calibration(tmp_path: Path) -> None:
    args = ["simulate", "--customers", "300", "--days", "45", "--seed", "2"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    cal = summary["calibration"]
    assert set(cal) == {"by_offer", "by_channel", "by_trigger", "comeback_rate", "targets", "pass"}
    assert cal["by_trigger"]["calendar"]["n"] == summary["rows"]["exposures"]
    exposures = pd.read_parquet(tmp_path / "a" / "exposures.parquet")
    uplift = (exposures.true_p_treated - exposures.true_p_untreated).mean()
    assert cal["by_trigger"]["calendar"]["mean_true_uplift"] == pytest.approx(uplift, abs=1e-5)
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    for text in ("Calibration", "by offer", "by channel", "by trigger", "intent", "calendar",
                 "email_treated_conversion", "intent_over_calendar"):  # fmt: skip
        assert text in res.stderr, text
