"""``nextbest journeys validate`` and ``schema``: exit codes, the lines printed, the schema file."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from journeys.definition import format_duration, journey_schema, parse_duration
from journeys.load import SCHEMA_PATH, schema_text, shipped_examples
from nextbest.cli import app

NAMES = "abandoned_basket, churn_save, contract_renewal, onboarding, winback"


def _bad_copy(folder: Path) -> Path:
    """The examples plus one broken file (two problems) in ``folder``."""
    shutil.copytree(shipped_examples(), folder)
    text = (folder / "winback.yaml").read_text(encoding="utf-8")
    bad = text.replace("name: winback", "name: winback_bad").replace(
        "share: 0.5, next: sms", "share: 0.4, next: sms"
    )
    (folder / "z_bad.yaml").write_text(
        bad.replace("window: 60d", "window: 60 days"), encoding="utf-8"
    )
    return folder / "z_bad.yaml"


def test_validate_the_examples_ok(private_home: Path) -> None:
    result = CliRunner().invoke(app, ["journeys", "validate", str(shipped_examples())])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ok: 5 journeys ({NAMES})"
    assert result.stderr == ""


def test_validate_defaults_to_the_active_folder(private_home: Path) -> None:
    runner = CliRunner()
    nothing = runner.invoke(app, ["journeys", "validate"])
    assert nothing.exit_code == 0 and nothing.stdout.strip() == "ok: 0 journeys ()"
    assert nothing.stderr.strip() == (
        f"no folder {private_home / 'home' / 'journeys'}: no journeys are active"
    )
    shutil.copytree(shipped_examples(), private_home / "home" / "journeys")
    active = runner.invoke(app, ["journeys", "validate", "--json"])
    assert active.exit_code == 0, active.output
    out = json.loads(active.stdout.strip().splitlines()[-1])
    assert [j["name"] for j in out["journeys"]] == NAMES.split(", ") and out["problems"] == []


def test_validate_prints_one_line_per_problem_and_exits_1(private_home: Path) -> None:
    bad = _bad_copy(private_home / "mine")
    result = CliRunner().invoke(app, ["journeys", "validate", str(private_home / "mine")])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}:11: journey winback_bad: entry.window: expected a duration like 15m, 1h, 30d "
        "or 2w, got '60 days'",
        f"{bad}:29: journey winback_bad: steps[0] (path).branches: shares sum to 0.9, not 1",
    ]
    as_json = CliRunner().invoke(app, ["journeys", "validate", str(bad), "--json"])
    assert as_json.exit_code == 1
    out = json.loads(as_json.stdout.strip().splitlines()[-1])
    assert out["journeys"] == [] and out["problems"] == result.stderr.splitlines()


def test_validate_a_missing_path(private_home: Path) -> None:
    result = CliRunner().invoke(app, ["journeys", "validate", str(private_home / "nope.yaml")])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"{private_home / 'nope.yaml'}: cannot read: No such file or directory"
    )


def test_schema_command_and_the_committed_schema_are_up_to_date(private_home: Path) -> None:
    out = private_home / "journey.schema.json"
    result = CliRunner().invoke(app, ["journeys", "schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == schema_text()
    printed = CliRunner().invoke(app, ["journeys", "schema"])
    assert json.loads(printed.stdout) == journey_schema()
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        "journeys/journey.schema.json is stale: run "
        "`nextbest journeys schema --out journeys/journey.schema.json`"
    )


def test_schema_accepts_the_files_spellings() -> None:
    """Durations and quiet hours are strings in the files; the schema must say so."""
    schema = journey_schema()["$defs"]
    wait = schema["WaitStep"]["properties"]["duration"]["anyOf"][0]
    assert wait == {"type": "string", "pattern": r"^(-?)(\d+)([smhdw])$"}
    assert schema["QuietHours"]["anyOf"][0]["pattern"] == r"^\d{2}:\d{2}-\d{2}:\d{2}$"


@pytest.mark.parametrize(
    ("text", "delta", "canonical"),
    [
        ("15m", timedelta(minutes=15), "15m"),
        ("90m", timedelta(minutes=90), "90m"),
        ("60m", timedelta(hours=1), "1h"),
        ("24h", timedelta(days=1), "1d"),
        ("30d", timedelta(days=30), "30d"),
        ("14d", timedelta(weeks=2), "2w"),
        ("2w", timedelta(weeks=2), "2w"),
        ("-60d", timedelta(days=-60), "-60d"),
        ("0m", timedelta(0), "0m"),
    ],
)
def test_durations_round_trip(text: str, delta: timedelta, canonical: str) -> None:
    assert parse_duration(text) == delta
    assert format_duration(delta) == canonical
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize("bad", ["1 hour", "1.5h", "h", "10y", "", "1H"])
def test_bad_durations_are_refused(bad: str) -> None:
    with pytest.raises(
        ValueError, match=f"^expected a duration like 15m, 1h, 30d or 2w, got {bad!r}$"
    ):
        parse_duration(bad)
