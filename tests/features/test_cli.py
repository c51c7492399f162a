"""The CLI end to end on the small world: build, apply, materialise, profile; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from nextbest.cli import app

pytestmark = pytest.mark.slow


def _json(result) -> dict:  # noqa: ANN001
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_build_apply_materialize_profile(private_home: Path, small_world: Path) -> None:
    runner = CliRunner()
    built = _json(runner.invoke(app, ["features", "build", "--world", str(small_world), "--json"]))
    # a customer has a row at every snapshot after signing up (some join inside the window)
    tenure = pd.read_parquet(small_world / "people.parquet")["tenure_start"]
    not_yet = sum(int((tenure >= pd.Timestamp(t)).sum()) for t in built["snapshots"])
    assert not_yet > 0
    assert built["customers"] > 150
    assert built["rows"] == built["customers"] * len(built["snapshots"]) - not_yet
    assert Path(built["feature_file"]).is_relative_to(private_home)
    applied = _json(runner.invoke(app, ["features", "apply", "--json"]))
    assert {"churn_v1", "offer_v1", "profile_v1"} <= set(applied["objects"])
    mat = _json(runner.invoke(app, ["features", "materialize", "--json"]))
    assert mat["rows"] == 5 * built["customers"]  # 4 views, and the segments (issue 18)
    assert "customer_segments" in mat["views"]

    cid = pd.read_parquet(built["feature_file"])["customer_id"].iloc[0]
    prof = _json(runner.invoke(app, ["profile", cid, "--json"]))
    assert prof["customer_id"] == cid and prof["identifiers_total"] >= 1
    assert prof["features"]["plan"]
    table = runner.invoke(app, ["profile", cid])
    assert table.exit_code == 0 and "basket" in table.stdout
    nobody = runner.invoke(app, ["profile", "nobody"])
    assert nobody.exit_code == 2
    assert nobody.stderr.strip() == "error: customer_id 'nobody' is not known to the identity graph"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["profile", "nobody"], "error: the feature registry has no profile_v2"),
        (
            ["features", "build", "--world", "/no/such/world"],
            "error: /no/such/world/people.parquet",
        ),
        (["features", "materialize"], "error: the feature registry is empty"),
    ],
)
def test_bad_input_exits_2_with_one_line(private_home: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)
