"""``nextbest bench journeys --quick --json`` runs end to end (real runner processes, the real
ingest path, SQLite and PostgreSQL when it answers) and prints every figure; the outbox holds
each sent step's message exactly once. Speed is not judged here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PHASES = ("runners_1_waiting_few", "runners_3_waiting_few",
          "runners_1_waiting_many", "runners_3_waiting_many")  # fmt: skip


@pytest.mark.slow
def test_bench_journeys_quick_prints_every_figure(tmp_path: Path) -> None:
    env = {**os.environ, "NEXTBEST_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "nextbest.cli", "bench", "journeys", "--quick", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("event_to_outbox_p50_ms", "event_to_outbox_p99_ms", "floor_insert_p50_ms",
                "floor_inserts_per_s", "event_to_outbox_p99_floor_ratio"):  # fmt: skip
        assert out[key] > 0, key
    kinds = ["sqlite"] + (["postgresql"] if out["postgresql"] == "measured" else [])
    assert set(out["databases"]) == set(kinds)
    for kind in kinds:
        d = out["databases"][kind]
        assert d["floor"]["insert_p50_ms"] > 0 and d["floor"]["inserts_per_s"] > 0
        lat = d["latency"]
        assert lat["entered"] > 0 and lat["messages"] > 0
        assert lat["event_to_outbox"]["p99_ms"] >= lat["event_to_outbox"]["p50_ms"] > 0
        for phase in PHASES:
            p = d[phase]
            assert out[f"{kind}_{phase}_steps_per_s"] == p["steps_per_s"] > 0
            assert p["steps"] == 2 * p["due"]  # the message and the wait, for every instance
            assert p["messages"] == p["sent_steps"] > 0
        for counts in [lat["counts"], *(d[p]["counts"] for p in PHASES)]:
            # every sent step's message in the outbox once: one row per id, one per customer
            assert counts["outbox"] == counts["outbox_messages"] == counts["sent"]
            assert counts["outbox_customers"] == counts["outbox"]
        assert out[f"{kind}_scaling_3_vs_1"] > 0
        assert out[f"{kind}_many_vs_few_waiting_1_runners"] > 0
    assert set(out["goals"]) >= {"event_to_outbox_p99<1000ms"}
