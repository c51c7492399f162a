"""Crash safety with real runner processes (`nextbest journeys run`): SIGKILL one while many
steps are due, restart it, and every step is taken exactly once; no message is sent twice.
SQLite with one runner; PostgreSQL with three sharing the work. Customers and their consents
come from a real Feast store of a small simulated world (tests/features' fixture)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from journeys.state import journey_instances, journey_steps
from nextbest.db import engine_for
from nextbest.settings import Settings
from record.ledger import Ledger
from record.tables import decisions, now, outbox
from serving import journey_runner as jr
from serving.deps import Deps
from tests.conftest import REPO_ROOT
from tests.features.conftest import feature_home, small_world  # noqa: F401 - fixtures
from tests.journeys.conftest import journey

JOURNEYS = 3  # three journeys x 200 customers: 600 instances, 1,800 steps due at once
STEPS = (
    "steps: [{id: email, type: message, channel: email, next: sms},"
    " {id: sms, type: message, channel: sms, next: done}, {id: done, type: exit}]"
)


def _journeys() -> list[Any]:
    return [
        journey(
            f"{{name: crash_{k}, offers: [device_upgrade, data_addon, streaming_bundle,"
            f" family_plan, prepaid_to_postpaid], entry: {{type: intent, event: basket_add}},"
            f" {STEPS}}}",
            holdout_share=0.0,
        )
        for k in range(JOURNEYS)
    ]


def _setup(home: Path, url: str, tmp: Path) -> tuple[Path, int]:
    """The journeys on file and every customer of the world entered: (folder, instances)."""
    folder = tmp / "journeys"
    folder.mkdir()
    settings = Settings(home=home, ledger_url=url, global_holdout_share=0.0)
    from features.identity import graph_for

    deps = Deps(settings=settings, ledger=Ledger(engine_for(url)), graph=graph_for(settings))
    customers = _customers(home)
    n = 0
    for j in _journeys():
        (folder / f"{j.name}.yaml").write_text(_yaml(j))
        for cid in customers:
            n += jr.enter(j, cid, now(), {}, deps) is not None
    return folder, n


def _yaml(j: Any) -> str:
    import yaml

    return yaml.safe_dump(j.model_dump(mode="json"))


def _customers(home: Path) -> list[str]:
    import pandas as pd

    frame = pd.read_parquet(home / "features" / "snapshots" / "customer_features.parquet")
    return sorted(set(frame["customer_id"].dropna().astype(str)))


def _runner(home: Path, url: str, folder: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nextbest.cli", "journeys", "run", "--batch", "20", *extra]
    return subprocess.Popen(
        cmd,
        env=_env(home, url, folder),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )


def _taken(url: str) -> int:
    with engine_for(url).connect() as conn:
        return conn.execute(select(func.count()).select_from(journey_steps)).scalar_one()


def _kill_after(proc: subprocess.Popen, url: str, steps: int, timeout: float = 180) -> int:
    """SIGKILL ``proc`` once at least ``steps`` steps are written; the count seen then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"runner exited early: {proc.stderr.read().decode()[-2000:]}")
        seen = _taken(url)
        if seen >= steps:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return seen
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"runner took fewer than {steps} steps in {timeout}s")


def _check(url: str, instances: int) -> dict[str, int]:
    """Every instance completed with its three steps, once each; one decision and one
    message per sent step, none twice."""
    with engine_for(url).connect() as conn:
        status = Counter(conn.execute(select(journey_instances.c.status)).scalars())
        steps = conn.execute(
            select(
                journey_steps.c.instance_id,
                journey_steps.c.seq,
                journey_steps.c.step_id,
                journey_steps.c.result,
                journey_steps.c.message_id,
            )  # fmt: skip
        ).all()
        messages = conn.execute(select(outbox.c.message_id, outbox.c.decision_id)).all()
        journey_decisions = [
            d
            for d, ctx in conn.execute(select(decisions.c.decision_id, decisions.c.context))
            if (ctx or {}).get("journey")
        ]
    assert status == {"completed": instances}, status
    by_instance: dict[str, list[tuple[int, str]]] = {}
    for iid, seq, step_id, _, _ in steps:
        by_instance.setdefault(iid, []).append((seq, step_id))
    assert len(by_instance) == instances
    for got in by_instance.values():
        assert sorted(got) == [(0, "email"), (1, "sms"), (2, "done")], got
    sent = [m for _, _, _, result, m in steps if result == "sent"]
    assert sent, "no step sent a message: the test would prove nothing"
    assert sorted(sent) == sorted(m for m, _ in messages)  # one message per sent step
    assert len(set(sent)) == len(sent)
    assert sorted(journey_decisions) == sorted(d for _, d in messages)  # none twice
    return {"sent": len(sent), "steps": len(steps)}


def test_sigkill_one_sqlite_runner_mid_step_and_restart(
    feature_home: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    home = feature_home.settings.home
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    folder, n = _setup(home, url, tmp_path)
    assert n == JOURNEYS * len(_customers(home)) and n >= 300
    proc = _runner(home, url, folder, "--poll", "0.05")
    seen = _kill_after(proc, url, 150)
    assert seen < 3 * n  # killed with work left
    cmd = [sys.executable, "-m", "nextbest.cli", "journeys", "run", "--once", "--json"]
    done = subprocess.run(
        cmd,
        env=_env(home, url, folder),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    print("sqlite, 1 runner:", _check(url, n), "killed after", seen, "steps")


def _env(home: Path, url: str, folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "NEXTBEST_HOME": str(home),
        "NEXTBEST_LEDGER_URL": url,
        "NEXTBEST_JOURNEYS_DIR": str(folder),
        "NEXTBEST_GLOBAL_HOLDOUT_SHARE": "0",
        "NEXTBEST_EPSILON": "0",
        "PYTHONPATH": str(REPO_ROOT),
    }


def test_three_postgresql_runners_one_killed_and_restarted(
    feature_home: Any,  # noqa: F811
    pg_url: str,
    tmp_path: Path,
) -> None:
    home = feature_home.settings.home
    folder, n = _setup(home, pg_url, tmp_path)
    runners = [_runner(home, pg_url, folder, "--poll", "0.05") for _ in range(3)]
    try:
        seen = _kill_after(runners[0], pg_url, 150)
        assert seen < 3 * n
        runners[0] = _runner(home, pg_url, folder, "--poll", "0.05")
        deadline = time.monotonic() + 600
        while _taken(pg_url) < 3 * n and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # let any step still in flight commit (it would be a 4th: caught below)
    finally:
        for p in runners:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    print("postgresql, 3 runners:", _check(pg_url, n), "one killed after", seen, "steps")
