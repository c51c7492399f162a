"""The soak benchmark runs end to end for a fraction of a minute: a real server, a separate
load process, the workers' memory sampled; its figures are not judged here, its shape is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.loadgen import MIX
from benchmarks.soak import max_step, slope_per_minute, warmup_seconds, window_seconds
from nextbest.cli import app


@pytest.mark.parametrize(
    ("seconds", "window", "warmup"),
    [
        (1800.0, 60.0, 300.0),  # 30 minutes: per minute, the first 5 excluded
        (600.0, 60.0, 300.0),
        (300.0, 60.0, 60.0),  # 5 minutes: the first one excluded
        (12.0, 3.0, 3.0),  # a test's 0.2 minutes: quarter windows, the first excluded
    ],
)
def test_windows_and_warmup(seconds: float, window: float, warmup: float) -> None:
    assert window_seconds(seconds) == window
    assert warmup_seconds(seconds, window) == warmup


def test_slope_and_step() -> None:
    samples = [(t, 100.0 + 0.5 * t / 60) for t in range(0, 600, 5)]  # 0.5 MiB a minute
    assert slope_per_minute(samples, after_s=300) == pytest.approx(0.5)
    assert slope_per_minute(samples[:2], after_s=0) is None  # too few points
    assert max_step([10.0, 12.0, 9.0]) == 0.25
    assert max_step([10.0]) is None


@pytest.mark.slow
def test_bench_soak_cli_for_twelve_seconds(private_home: Path) -> None:
    args = ["bench", "soak", "--minutes", "0.2", "--rate", "50", "--use-home", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["errors"] == 0, out["statuses"]
    assert out["requests"] > 300 and set(out["statuses"]) == set(MIX)
    assert all(out["statuses"][kind] for kind in MIX), out["statuses"]  # every kind was sent
    assert out["workers"] >= 1 and out["rss_end_mib"] > 50
    assert (out["window_seconds"], out["warmup_excluded_seconds"]) == (3.0, 3.0)
    assert len(out["windows"]) == 4
    for row in out["windows"]:
        assert {"start_s", "requests", "errors", "p50_ms", "p99_ms", "rss_mib"} <= set(row)
    assert out["rss_slope_mib_per_min"] is not None and out["p99_max_step"] is not None
    assert set(out["goals"]) == {"errors==0", "p99_step<=20%", "rss_slope<0.2MiB/min"}
