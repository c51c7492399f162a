"""`nextbest train` / `promote`: bad input exits 2 with one line naming the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nextbest.cli import app

BAD = [
    (["train", "ranker"], r"^error: model: 'ranker' is not one of churn, propensity, bandit$"),
    (
        ["train", "propensity", "--csv", "x.csv", "--label", "y"],
        r"^error: csv: --csv trains churn models only, not 'propensity'$",
    ),
    (["train", "churn", "--csv", "x.csv"], r"^error: csv: --csv and --label go together$"),
    (
        ["train", "churn"],
        r"^error: events: .*batch\.parquet is missing \(run `nextbest features build` first\)$",
    ),
    (
        ["promote", "ranker"],
        r"^error: model: 'ranker' is not one of churn, propensity, bandit, clv$",
    ),
    (
        ["promote", "bandit"],
        r"^error: model: 'bandit' has no challenger; run `nextbest train bandit`",
    ),
    (["promote", "churn"], r"^error: model: 'churn' has no challenger; run `nextbest train churn`"),
]


@pytest.mark.parametrize(("args", "error"), BAD)
def test_bad_commands(private_home: Path, args: list[str], error: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert re.match(error, lines[0]), lines[0]


BAD_SETTINGS = [
    (
        {"NEXTBEST_BANDIT_REWARD": "margin"},
        "error: settings: NEXTBEST_BANDIT_REWARD: Input should be 'spend' or 'conversion' "
        "(got 'margin')",
    ),
    (
        {"NEXTBEST_EPSILON": "2"},
        "error: settings: NEXTBEST_EPSILON: Input should be less than or equal to 1 (got '2')",
    ),
    (
        {"NEXTBEST_ATTRIBUTION_DAYS": "a month"},
        "error: settings: NEXTBEST_ATTRIBUTION_DAYS: Input should be a valid integer, unable to "
        "parse string as an integer (got 'a month')",
    ),
]


@pytest.mark.parametrize(("env", "error"), BAD_SETTINGS)
@pytest.mark.parametrize("args", [["train", "bandit"], ["replay", "--visits", "10"]])
def test_bad_settings_stop_any_command_with_one_line(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, env: dict, error: str, args: list[str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [error]
