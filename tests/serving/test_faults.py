"""A real served Nextbest with its stores behind fault proxies (``benchmarks.faults``): Redis
hung and refusing, PostgreSQL hung, a corrupt model store. Decisions are timed; a hang must
not happen, and nothing acknowledged may be lost.

Prints the figures as one ``--json`` line (``pytest -s``): the numbers in the report come
from ``benchmarks.faults.outage_figures``, which this test runs.
"""

from __future__ import annotations

import json
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.faults import FaultProxy, outage_figures, recovery_seconds, timed_decisions
from nextbest.db import engine_for, postgres_unavailable, scratch_postgres
from nextbest.settings import Settings
from record.ledger import Ledger
from serving import run
from tests.serving.conftest import ADMIN, CHANNEL

pytestmark = pytest.mark.slow
REDIS_FAULT_DB = 14  # nothing is written to it: the service only reads (empty) profiles


def _redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.5).ping())
    except Exception:  # noqa: BLE001
        return False


def _corrupt_model_store(settings: Settings) -> None:
    """Promoted-looking champions and bandit whose files are garbage."""
    from training.scoring import bentoml_models

    models = bentoml_models(settings)
    for name, files in {
        "churn": [
            "mlflow_model/artifacts/bundle/spec.json",
            "mlflow_model/artifacts/bundle/booster_0.txt",
        ],
        "propensity": ["mlflow_model/artifacts/bundle/spec.json"],
        "bandit": ["model.vw"],
    }.items():
        with models.create(name, metadata={"mlflow_version": "9"}) as model:
            for rel in files:
                path = Path(model.path_of(rel))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\x00\xffgarbage{" * 64)


@dataclass
class Served:
    base: str
    settings: Settings
    redis: FaultProxy
    postgres: FaultProxy | None
    log: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the file (a start costs seconds): features on Redis through a proxy, the
    ledger on PostgreSQL through a proxy (SQLite when PostgreSQL does not answer), and a
    corrupt model store."""
    if not _redis_up():
        pytest.skip("Redis is not answering on 127.0.0.1:6379 (fault tests of a served home)")
    from features.store import apply_repo, get_store

    home = tmp_path_factory.mktemp("faults_home")
    pg_down = postgres_unavailable()
    with FaultProxy(("127.0.0.1", 6379)) as redis_proxy, _ledger(pg_down) as (pg_proxy, url):
        env = {
            "NEXTBEST_ONLINE_STORE": "redis",
            "NEXTBEST_REDIS_URL": f"127.0.0.1:{redis_proxy.port},db={REDIS_FAULT_DB}",
            "NEXTBEST_FEATURE_TIMEOUT_MS": "100",
        }
        if url:
            env["NEXTBEST_LEDGER_URL"] = url
        settings = Settings(
            home=home,
            online_store="redis",
            redis_url=env["NEXTBEST_REDIS_URL"],
            ledger_url=url,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            apply_repo(get_store(settings))
        _corrupt_model_store(settings)
        log = home / "server.log"
        port = run.free_port()
        proc = run.start(settings, port, log=log, **env)
        try:
            run.wait_ready(proc, port, timeout=120)
            yield Served(f"http://127.0.0.1:{port}", settings, redis_proxy, pg_proxy, log)
        finally:
            run.stop(proc, signal.SIGTERM)


class _ledger:
    """A scratch PostgreSQL database behind a proxy: (proxy, URL), or (None, None)."""

    def __init__(self, pg_down: str | None) -> None:
        self.pg_down = pg_down

    def __enter__(self) -> tuple[FaultProxy | None, str | None]:
        if self.pg_down:
            self.scratch, self.proxy = None, None
            return None, None
        self.scratch = scratch_postgres("nb_faults")
        url = self.scratch.__enter__()
        self.proxy = FaultProxy(("127.0.0.1", 5432))
        self.url = url.replace("127.0.0.1:5432", f"127.0.0.1:{self.proxy.port}")
        return self.proxy, self.url

    def __exit__(self, *exc: Any) -> None:
        if self.proxy is not None:
            self.proxy.close()
            engine_for(self.url).dispose()
        if self.scratch is not None:
            self.scratch.__exit__(*exc)


def _features_reason(body: dict[str, Any]) -> str | None:
    return next((r for r in body["reasons"] if r.startswith("features:")), None)


def test_redis_hung_or_down_costs_a_fast_fallback_and_recovers(served: Served) -> None:
    """Before: a hung Redis stalled every request about a minute (the batch was read on the
    event loop, with redis-py's 5 s timeout retried 10 times); refusing, /decide p50 was 1.2 s
    and /healthz took seconds."""
    base, proxy = served.base, served.redis
    first = httpx.post(
        f"{base}/decide", json={"customer_id": "c1", "channel": "web"}, headers=CHANNEL
    )
    assert first.status_code == 200, served.log.read_text()[-3000:]
    assert _features_reason(first.json()) is None  # Redis answers: features read (empty)

    figures = outage_figures(base, CHANNEL, proxy, seconds=3.0)
    print("--json", json.dumps({"redis_outage": figures}))
    for mode in ("hang", "refuse"):
        got = figures[mode]
        assert got["statuses"] == {200: got["requests"]}, got  # never a 5xx
        assert got["features_fallbacks"] >= got["requests"] - 12, got  # all but the first few
        assert got["max_ms"] < 2000, got  # a timeout, never a hang
        assert got["recovery_s"] is not None and got["recovery_s"] < 5, got  # issue 15's goal


def test_healthz_answers_at_once_during_a_redis_outage(served: Served) -> None:
    base, proxy = served.base, served.redis
    try:
        proxy.set("hang")
        timed_decisions(base, CHANNEL, seconds=0.6, concurrency=2)  # opens the circuit
        t0 = time.perf_counter()
        health = httpx.get(f"{base}/healthz", headers=ADMIN, timeout=10)
        took = time.perf_counter() - t0
        assert health.status_code == 200 and took < 1.0, took
        parts = health.json()["parts"]
        assert health.json()["status"] == "degraded"
        assert parts["features"].startswith("circuit "), parts
        decided = httpx.post(
            f"{base}/decide", json={"customer_id": "c2", "channel": "web"}, headers=CHANNEL
        )
        assert decided.json()["fallback"] is True
        assert "features circuit" in _features_reason(decided.json())
    finally:
        proxy.set("up")
    assert recovery_seconds(base, CHANNEL, time.monotonic(), limit=10) is not None


def test_a_corrupt_model_store_gives_fallbacks_not_5xx(served: Served) -> None:
    health = httpx.get(f"{served.base}/healthz", headers=ADMIN).json()
    assert health["status"] == "degraded"
    assert health["parts"]["models"] != "ok" and health["parts"]["bandit"] != "ok", health
    r = httpx.post(
        f"{served.base}/decide", json={"customer_id": "c3", "channel": "web"}, headers=CHANNEL
    )
    assert r.status_code == 200 and r.json()["fallback"] is True
    assert any(why.startswith("models:") for why in r.json()["reasons"]), r.json()


def test_a_hung_ledger_gives_a_fast_503_and_loses_nothing_acknowledged(served: Served) -> None:
    if served.postgres is None:
        pytest.skip(postgres_unavailable() or "no PostgreSQL ledger")
    base, proxy = served.base, served.postgres
    acked: list[str] = []
    with httpx.Client(base_url=base, headers=CHANNEL, timeout=30) as http:
        for i in range(5):
            r = http.post("/decide", json={"customer_id": f"pg-{i}", "channel": "web"})
            assert r.status_code == 200, r.text
            acked.append(r.json()["decision_id"])
        proxy.set("hang")
        try:
            answers = []
            for i in range(3):
                t0 = time.perf_counter()
                r = http.post("/decide", json={"customer_id": f"pg-hung-{i}", "channel": "web"})
                answers.append((r.status_code, r.json(), round(time.perf_counter() - t0, 2)))
                if r.status_code == 200:
                    acked.append(r.json()["decision_id"])
        finally:
            proxy.set("up")
        print("--json", json.dumps({"ledger_hung": answers}))
        for status, _body, took in answers:
            assert took < 8, answers  # within the 10 s request budget: never a hang
            assert status == 503, answers  # the body naming `ledger` is the service mapping's
        for _ in range(50):  # back: decisions are written again
            r = http.post("/decide", json={"customer_id": "pg-back", "channel": "web"})
            if r.status_code == 200:
                acked.append(r.json()["decision_id"])
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no decision after the ledger returned: {r.text}")
    logged = set(Ledger(engine_for(served.settings.ledger_db_url)).logs()["decision_id"])
    assert set(acked) <= logged
