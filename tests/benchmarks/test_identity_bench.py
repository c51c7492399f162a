"""``bench identity``: a tiny run gives every figure for the floor and ours; bad options fail
with one line. (The figures themselves are judged in docs/benchmarks.md, not here.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.identity_messy import messy_records
from nextbest.cli import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "10k"], "--sizes: expected comma-separated record counts, got '10k'"),
        (["--sizes", "1"], "--sizes: every size must be at least 2, got '1'"),
        (["--csv", "/nonexistent/records.csv"], "--csv /nonexistent/records.csv: no such file"),
    ],
)
def test_bad_options_fail_with_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "identity", *args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == f"error: {message}"


@pytest.mark.slow  # two worker processes: 2 s on a quiet machine, 30 s on a loaded one
def test_a_tiny_run_reports_floor_and_ours(tmp_path: Path) -> None:
    csv = tmp_path / "records.csv"
    messy_records(600, seed=2).to_csv(csv, index=False)
    plot = tmp_path / "identity.png"
    args = ["bench", "identity", "--csv", str(csv), "--plot", str(plot), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    floor, ours = out["rows"]
    assert (floor["engine"], ours["engine"]) == ("floor", "ours")
    assert floor["records"] == ours["records"] == 600
    assert ours["time_vs_floor"] > 0 and 0 < ours["peak_gb"] < 2
    assert ours["precision"] > 0.9 and ours["recall"] > 0.5
    assert plot.stat().st_size > 1000
