"""The scale-out path end to end: a real ``bentoml serve`` with two workers on a real
PostgreSQL ledger (decisions, outcomes, identity graph), every acknowledged write found."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from nextbest.db import engine_for
from nextbest.settings import Settings
from record.ledger import Ledger, caller_key
from serving import run
from tests.serving.conftest import ADMIN, CHANNEL


@pytest.mark.slow
def test_two_workers_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, ledger_url=pg_url, workers=2)
    log = tmp_path / "server.log"
    with run.served(settings, log=log, NEXTBEST_LEDGER_URL=pg_url) as base:

        def visit(i: int) -> dict:
            body = {"customer_id": f"pg-{i % 7}", "channel": ("web", "app", "email")[i % 3]}
            r = httpx.post(f"{base}/decide", json=body, headers=CHANNEL, timeout=30)
            assert r.status_code == 200, r.text
            return r.json()

        with ThreadPoolExecutor(8) as pool:  # concurrent: both workers write
            decided = list(pool.map(visit, range(60)))
        key = uuid.uuid4().hex
        outcome = {"idempotency_key": key, "decision_id": decided[0]["decision_id"],
                   "type": "conversion", "value": 12.5}  # fmt: skip
        first = httpx.post(f"{base}/outcome", json=outcome, headers=CHANNEL).json()
        again = httpx.post(f"{base}/outcome", json=outcome, headers=CHANNEL).json()
        assert (first["recorded"], again["recorded"]) == (True, False)
        erased = httpx.post(f"{base}/erase", json={"customer_id": "pg-3"}, headers=ADMIN)
        assert erased.status_code == 200, erased.text
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]

    ledger = Ledger(engine_for(pg_url))
    logs = ledger.logs()
    assert set(logs["decision_id"]) >= {d["decision_id"] for d in decided}
    outcomes = ledger.outcomes_frame()
    assert (outcomes["idempotency_key"] == caller_key(key)).sum() == 1
    assert not (logs["customer_id"] == "pg-3").any()  # erased: anonymised, still counted
