"""A real ``bentoml serve`` subprocess: the example request over HTTP, then a crash test that
SIGKILLs the server under load, restarts it, and finds every acknowledged write in the ledger."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from nextbest.db import engine_for
from nextbest.settings import Settings
from record.ledger import Ledger, caller_key
from serving import run
from serving.schemas import EXAMPLE_REQUEST
from tests.serving.conftest import CHANNEL

EXAMPLE = EXAMPLE_REQUEST


def _load(base: str, acked: dict[str, list[str]], stop: threading.Event, k: int) -> None:
    """Decide, then report an outcome for it; remember only what the server acknowledged."""
    with httpx.Client(base_url=base, headers=CHANNEL, timeout=5) as client:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = client.post("/decide", json={"customer_id": f"load-{k}-{i}", "channel": "app"})
                if r.status_code != 200:
                    continue
                acked["decisions"].append(r.json()["decision_id"])
                key = uuid.uuid4().hex
                body = {
                    "idempotency_key": key,
                    "decision_id": r.json()["decision_id"],
                    "type": "click",
                }
                if client.post("/outcome", json=body).status_code == 200:
                    acked["outcomes"].append(key)
            except httpx.HTTPError:
                return  # the server is gone


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_real_server_and_sigkill(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """SQLite runs with ``synchronous=NORMAL`` (the default): in WAL mode it loses nothing to
    a process crash (only to power loss), and the opt-in FULL is strictly stronger.
    PostgreSQL (the scale-out ledger) runs two workers, both writing when the kill comes."""
    env = {"NEXTBEST_LEDGER_SYNCHRONOUS": "NORMAL"}
    if backend == "postgresql":
        pg_url = request.getfixturevalue("pg_url")
        settings = Settings(home=tmp_path, workers=2, ledger_url=pg_url)
        env["NEXTBEST_LEDGER_URL"] = pg_url
    else:
        settings = Settings(home=tmp_path, workers=1, ledger_synchronous="NORMAL")
    port = run.free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    proc = run.start(settings, port, log=log, **env)
    try:
        run.wait_ready(proc, port, timeout=120)
        r = httpx.post(f"{base}/decide", json=EXAMPLE, headers=CHANNEL)
        assert r.status_code == 200, r.text
        bad = httpx.post(f"{base}/decide", json={**EXAMPLE, "channel": "fax"}, headers=CHANNEL)
        assert bad.status_code == 400 and bad.json()["field"] == "channel"

        acked: dict[str, list[str]] = {"decisions": [], "outcomes": []}
        stop = threading.Event()
        threads = [threading.Thread(target=_load, args=(base, acked, stop, k)) for k in range(6)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        run.stop(proc, signal.SIGKILL)  # server and workers, mid-load, no shutdown hooks
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{base}/healthz", timeout=2)  # really gone
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert len(acked["decisions"]) > 20, log.read_text()[-2000:]

        proc = run.start(settings, port, log=log, **env)
        run.wait_ready(proc, port, timeout=120)
        assert httpx.post(f"{base}/decide", json=EXAMPLE, headers=CHANNEL).status_code == 200
        ledger = Ledger(engine_for(settings.ledger_db_url))
        logged = set(ledger.logs()["decision_id"])
        keys = set(ledger.outcomes_frame()["idempotency_key"])
        assert set(acked["decisions"]) <= logged
        assert {caller_key(k) for k in acked["outcomes"]} <= keys  # as stored
    finally:
        run.stop(proc)
