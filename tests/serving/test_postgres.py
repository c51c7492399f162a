"""The scale-out path end to end: a real ``bentoml serve`` with two workers on a real
PostgreSQL ledger (decisions, outcomes, identity graph), every acknowledged write found."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from nextbest.db import engine_for, postgres_unavailable, scratch_postgres
from nextbest.settings import Settings
from record.ledger import Ledger, caller_key
from serving import run
from tests.serving.conftest import ADMIN, CHANNEL


def faults(log: str) -> list[str]:
    """The tracebacks in a server log that are not a bad request's (BentoML logs a 400's
    ValidationError with its traceback too): each one's exception line."""
    found = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = block.splitlines()[1:]
        raised = next((ln for ln in lines if ln and not ln[0].isspace()), "")
        if "ValidationError" not in raised:
            found.append(raised)
    return found


@pytest.fixture(scope="module")
def pg_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A real server with two workers on a scratch PostgreSQL ledger, shared by this module's
    tests: its base URL, the ledger URL and its log."""
    why = postgres_unavailable()
    if why is not None:
        pytest.skip(why)
    tmp_path = tmp_path_factory.mktemp("pg_served")
    with scratch_postgres("nb_test") as pg_url:
        settings = Settings(home=tmp_path, ledger_url=pg_url, workers=2)
        log = tmp_path / "server.log"
        with run.served(settings, log=log, NEXTBEST_LEDGER_URL=pg_url) as base:
            yield base, pg_url, log


@pytest.mark.slow
def test_two_workers_on_postgresql(pg_served: tuple[str, str, Path]) -> None:
    base, pg_url, log = pg_served

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
    assert not faults(log.read_text()), faults(log.read_text())

    ledger = Ledger(engine_for(pg_url))
    logs = ledger.logs()
    assert set(logs["decision_id"]) >= {d["decision_id"] for d in decided}
    outcomes = ledger.outcomes_frame()
    assert (outcomes["idempotency_key"] == caller_key(key)).sum() == 1
    assert not (logs["customer_id"] == "pg-3").any()  # erased: anonymised, still counted


@pytest.mark.slow
def test_a_bad_id_fails_no_other_customers_decision(pg_served: tuple[str, str, Path]) -> None:
    """90 concurrent decisions over both workers, 5 of them with a customer id longer than the
    ledger's column: those 5 get a 400 naming ``customer_id`` (before: accepted by the API,
    they failed their whole commit group, and 7 of 90 normal decisions got a 500); every
    other decision is answered and committed."""
    base, pg_url, log = pg_served
    bad = {7: "x" * 65, 23: "y" * 100, 41: "z" * 256, 60: "w" * 200, 88: "v" * 65}

    def visit(i: int) -> httpx.Response:
        body = {"customer_id": bad.get(i, f"ok-{i}"), "channel": ("web", "app")[i % 2]}
        return httpx.post(f"{base}/decide", json=body, headers=CHANNEL, timeout=30)

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(visit, range(90)))
    statuses = {i: r.status_code for i, r in enumerate(answers)}
    assert {i: s for i, s in statuses.items() if s != 200} == dict.fromkeys(bad, 400)
    for i in bad:
        assert answers[i].json()["field"] == "customer_id", answers[i].text
        assert answers[i].json()["error"].startswith("customer_id: String should have at most 64")
    logged = set(Ledger(engine_for(pg_url)).logs()["decision_id"])
    assert {r.json()["decision_id"] for r in answers if r.status_code == 200} <= logged
    assert not faults(log.read_text()), faults(log.read_text())
