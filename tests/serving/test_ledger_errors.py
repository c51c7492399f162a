"""The ledger at the API's edge: ids no longer than its columns (a 400 naming the field), and a
ledger that cannot write (a full disk) answers 503 naming the ledger, never 500, losing
nothing it acknowledged before."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, String, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.testclient import TestClient

from features.schema import CUSTOMER_ID_MAX
from nextbest.db import engine_for
from nextbest.settings import Settings
from record.ledger import Ledger, LedgerError, RowRejected, caller_key
from record.tables import metadata
from serving import run
from serving.auth import clear_validation_error
from serving.schemas import DecideRequest
from serving.unavailable import ledger_guard
from tests.serving.conftest import ADMIN, CHANNEL

LONG = "x" * (CUSTOMER_ID_MAX + 1)
TOO_LONG = f"String should have at most {CUSTOMER_ID_MAX} characters"
RECENT = (datetime.now(UTC) - timedelta(hours=1)).isoformat()


def test_every_customer_id_column_and_api_field_share_one_limit() -> None:
    """The ledger's and the journeys' columns and every API field that takes a customer id
    agree (features.schema.CUSTOMER_ID_MAX): no id the API accepts overflows a column."""
    import journeys.intent_state  # noqa: F401 - their tables join the metadata
    import journeys.schedule_state  # noqa: F401
    import journeys.state  # noqa: F401
    from serving.actions import EraseRequest, OutcomeRequest
    from serving.journey_agent import JourneyAction
    from serving.schemas import DecideRequest

    columns = {
        f"{t.name}.{c.name}": c.type.length
        for t in metadata.sorted_tables
        for c in t.columns
        if c.name in ("customer_id", "unit_key") and isinstance(c.type, String)
    }
    assert len(columns) >= 9 and set(columns.values()) == {CUSTOMER_ID_MAX}, columns
    for model in (DecideRequest, OutcomeRequest, EraseRequest, JourneyAction):
        limits = [m.max_length for m in model.model_fields["customer_id"].metadata
                  if hasattr(m, "max_length")]  # fmt: skip
        assert limits == [CUSTOMER_ID_MAX], model


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "error"),
    [
        ("post", "/decide", {"customer_id": LONG, "channel": "web"}, CHANNEL, TOO_LONG),
        (
            "post",
            "/outcome",
            {"idempotency_key": "k", "type": "click", "customer_id": LONG},
            CHANNEL,
            TOO_LONG,
        ),
        ("post", "/erase", {"customer_id": LONG}, ADMIN, TOO_LONG),
        ("get", f"/profile/{LONG}", None, CHANNEL, f"must be 1 to {CUSTOMER_ID_MAX} characters"),
    ],
)
def test_a_customer_id_longer_than_the_ledger_holds_is_refused(
    client: TestClient, method: str, path: str, body: dict | None, headers: dict, error: str
) -> None:
    r = client.request(method.upper(), path, json=body, headers=headers)
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (
        400,
        f"customer_id: {error}",
        "customer_id",
    )


def test_identifiers_stored_only_hashed_may_be_longer(client: TestClient) -> None:
    """An e-mail or cookie id of 256 characters is fine: the ledger keeps only its hash."""
    body = {"cookie_id": "c" * 256, "email": f"{'e' * 240}@example.com", "channel": "web"}
    r = client.post("/decide", json=body, headers=CHANNEL)
    assert r.status_code == 200, r.text
    r = client.post("/decide", json={**body, "cookie_id": "c" * 257}, headers=CHANNEL)
    assert (r.status_code, r.json()["field"]) == (400, "cookie_id")


@contextlib.contextmanager
def full_database(engine: Engine) -> Iterator[None]:
    """SQLite's own "database or disk is full" on every new connection of ``engine``: its
    ``max_page_count`` is the pages the file has now, so a write needing one more page fails
    as on a full disk. Undone afterwards (new connections again). Vacuumed first: a free page
    left by an earlier test's deletes would take a row without growing the file."""
    engine.dispose()
    with engine.connect() as conn:
        conn.exec_driver_sql("VACUUM")
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()

    def cap(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

    event.listen(engine, "connect", cap)
    engine.dispose()  # pooled and held connections reconnect, capped
    try:
        yield
    finally:
        event.remove(engine, "connect", cap)
        engine.dispose()


def _until_refused(send: Any, tries: int = 400) -> tuple[list[httpx.Response], httpx.Response]:
    """Requests until one is not a 200 (a page may still have room for a few rows): the
    acknowledged ones and the first refusal."""
    ok = []
    for i in range(tries):
        r = send(i)
        if r.status_code != 200:
            return ok, r
        ok.append(r)
    raise AssertionError(f"{tries} writes fitted in a full database")


def test_a_full_ledger_answers_503_and_keeps_what_it_acknowledged(client: TestClient) -> None:
    """In process, SQLite itself full: /decide, /outcome, /events and /erase answer 503 with
    ``{"error": "ledger: ...", "field": "ledger"}`` (before: 500), every decision and outcome
    acknowledged stays in the ledger, and with room again the same requests succeed."""
    from serving.service import STATE

    ledger = STATE.deps.ledger
    run_id = uuid.uuid4().hex[:8]
    before = client.post("/decide", json={"customer_id": f"full-{run_id}", "channel": "web"},
                         headers=CHANNEL).json()  # fmt: skip
    full = {"error": "ledger: OperationalError: database or disk is full", "field": "ledger"}

    def decide(i: int) -> httpx.Response:
        body = {"customer_id": f"full-{run_id}-{i}", "channel": "app"}
        return client.post("/decide", json=body, headers=CHANNEL)

    def outcome(i: int) -> httpx.Response:
        body = {"idempotency_key": f"full-{run_id}-{i}", "type": "click",
                "decision_id": before["decision_id"]}  # fmt: skip
        return client.post("/outcome", json=body, headers=CHANNEL)

    def purchase(i: int) -> httpx.Response:
        body = {"ts": RECENT, "channel": "store", "event_type": "purchase", "value": 5.0,
                "customer_id": f"full-{run_id}", "event_id": f"{run_id}-{i}"}  # fmt: skip
        return client.post("/events", json=body, headers=CHANNEL)

    with full_database(ledger.engine):
        decided, refused = _until_refused(decide)
        assert (refused.status_code, refused.json()) == (503, full)
        reported, refused = _until_refused(outcome)
        assert (refused.status_code, refused.json()) == (503, full)
        # a purchase's row may land on a page another table's refusal did not need
        bought, refused = _until_refused(purchase)
        assert (refused.status_code, refused.json()) == (
            503,
            {**full, "event_id": f"{run_id}-{len(bought)}"},
        )
        # an erasure mostly deletes: it fails only when its own record needs a new page
        r = client.post("/erase", json={"customer_id": f"full-{run_id}"}, headers=ADMIN)
        assert (r.status_code, r.json()) == (503, full) or (
            r.status_code == 200 and r.json()["status"] == "done"
        ), r.text
    logged = set(ledger.logs()["decision_id"])
    assert {r.json()["decision_id"] for r in [*decided]} | {before["decision_id"]} <= logged
    keys = set(ledger.outcomes_frame()["idempotency_key"])
    assert {caller_key(f"full-{run_id}-{i}") for i in range(len(reported))} <= keys
    assert (
        caller_key(f"full-{run_id}-{len(reported)}") not in keys
    )  # the refused one was not written
    assert decide(999).status_code == 200  # room again: the same service writes again
    assert outcome(len(reported)).json()["recorded"] is True
    assert all(r.json()["outcome_recorded"] for r in bought)
    assert purchase(len(bought)).status_code == 200


# --- a real full disk: a tiny tmpfs under a real server -----------------------------------


@contextlib.contextmanager
def tiny_disk(where: Path, size: str = "32m") -> Iterator[Path]:
    """A size-limited file system at ``where`` (tmpfs; needs root or CAP_SYS_ADMIN, else a
    skip that says so), unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to its last byte with one file (deleted to make room again)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 65536, 4096, 1):  # big blocks, then what is left, to the byte
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) == size:
                    pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_a_full_disk_under_a_real_server(tmp_path: Path) -> None:
    """The ledger on a tiny tmpfs under a real ``bentoml serve``, filled up while clients
    decide and report outcomes: refused requests are 503 naming the ledger (never 500),
    every acknowledged decision and outcome is in the ledger, and once the disk has room the
    same server writes again. (32 MB: under full load the WAL grows by megabytes a second,
    and a WAL that fills the disk itself cannot be checkpointed until room is made.)"""
    disk = tiny_disk(tmp_path / "disk")
    with disk as where:
        url = f"sqlite:///{where / 'ledger.db'}"
        settings = Settings(home=tmp_path / "home", ledger_url=url)
        log = tmp_path / "server.log"
        acked: dict[str, list[str]] = {"decisions": [], "outcomes": []}
        statuses: dict[int, int] = {}
        bodies: list[dict] = []
        stop = threading.Event()

        def load(k: int, base: str) -> None:
            with httpx.Client(base_url=base, headers=CHANNEL, timeout=10) as c:
                i = 0
                while not stop.is_set() and i < 3000:
                    i += 1
                    r = c.post("/decide", json={"customer_id": f"d-{k}-{i}", "channel": "app"})
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code != 200:
                        bodies.append(r.json())
                        time.sleep(0.01)
                        continue
                    acked["decisions"].append(r.json()["decision_id"])
                    key = uuid.uuid4().hex
                    out = {"idempotency_key": key, "type": "click"}
                    o = c.post("/outcome", json={**out, "decision_id": r.json()["decision_id"]})
                    statuses[o.status_code] = statuses.get(o.status_code, 0) + 1
                    if o.status_code == 200:
                        acked["outcomes"].append(key)
                    else:
                        bodies.append(o.json())

        with run.served(settings, log=log, NEXTBEST_LEDGER_URL=url) as base:
            threads = [threading.Thread(target=load, args=(k, base)) for k in range(4)]
            for t in threads:
                t.start()
            time.sleep(1.0)  # some acknowledged before the disk fills
            filler = fill(where)
            room = filler.stat().st_size  # freed again below
            deadline = time.monotonic() + 30
            while statuses.get(503, 0) < 20 and time.monotonic() < deadline:
                time.sleep(0.1)
            full_503s = statuses.get(503, 0)
            stop.set()
            for t in threads:
                t.join(timeout=15)
            filler.unlink()  # room again (after the load: it would fill the room at once)
            deadline = time.monotonic() + 3  # the next commit (or checkpoint) finds the room
            while True:
                body = {"customer_id": "after", "channel": "web"}
                after = httpx.post(f"{base}/decide", json=body, headers=CHANNEL)
                if after.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert after.status_code == 200, after.text
        assert full_503s >= 20, (statuses, log.read_text()[-3000:])
        assert room > 4 << 20, room  # the filler filled the disk, not the ledger's WAL
        assert set(statuses) <= {200, 503}, (statuses, bodies[:3])
        assert all(b["field"] == "ledger" and b["error"].startswith("ledger: ") for b in bodies)
        assert any("full" in b["error"] for b in bodies), bodies[:3]
        ledger = Ledger(engine_for(url))
        assert set(acked["decisions"]) <= set(ledger.logs()["decision_id"])
        stored = set(ledger.outcomes_frame()["idempotency_key"])
        assert {caller_key(k) for k in acked["outcomes"]} <= stored
        assert len(acked["decisions"]) > 20
        ledger.engine.dispose()


@pytest.mark.parametrize(
    ("raised", "status", "body"),
    [
        (
            RowRejected("longer than 64 characters", field="customer_id"),
            400,
            {"error": "customer_id: longer than 64 characters", "field": "customer_id"},
        ),
        (  # not a field of the request: the ledger's own value, not the caller's
            RowRejected("longer than 64 characters", field="offer_id"),
            503,
            {"error": "ledger: offer_id: longer than 64 characters", "field": "ledger"},
        ),
        (
            RowRejected("IntegrityError: UNIQUE constraint failed: decisions.decision_id"),
            503,
            {
                "error": "ledger: IntegrityError: UNIQUE constraint failed: decisions.decision_id",
                "field": "ledger",
            },
        ),
        (
            LedgerError("customer c: history kept changing over 50 plans"),
            503,
            {"error": "ledger: customer c: history kept changing over 50 plans", "field": "ledger"},
        ),
        (
            OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused")),
            503,
            {"error": "ledger: ConnectionRefusedError: connection refused", "field": "ledger"},
        ),
        (
            PoolTimeout("QueuePool limit of size 10 overflow 20 reached"),
            503,
            {
                "error": "ledger: TimeoutError: QueuePool limit of size 10 overflow 20 reached",
                "field": "ledger",
            },
        ),
    ],
)
def test_the_ledger_guard_maps_each_failure(raised: Exception, status: int, body: dict) -> None:
    """What ``ledger_guard`` answers for each failure an API method can meet in the ledger:
    a 400 naming the field only for a value the request itself sent, else a 503."""

    @ledger_guard
    async def api(self: Any, request: DecideRequest, /) -> dict:
        raise raised

    request = DecideRequest(customer_id="c", channel="web")
    try:
        response = asyncio.run(api(None, request))
    except ValidationError as exc:  # BentoML answers it with a 400 that ApiGuard rewrites so
        detail = json.loads(exc.json(include_context=False, include_input=False))
        got = clear_validation_error({"detail": detail})
        got.pop("detail")
        assert (400, got) == (status, body)
    else:
        assert (response.status_code, json.loads(response.body)) == (status, body)


def test_the_starlette_routes_answer_a_full_ledger_with_503(client: TestClient) -> None:
    """/profile logs the offers it shows: with the ledger full it is a 503 naming the ledger
    (a 500 before), as the API routes answer."""
    from serving.service import STATE
    from tests.serving.conftest import register

    cid = f"profile-{uuid.uuid4().hex[:8]}"
    register(STATE.deps.graph, cid)
    assert client.get(f"/profile/{cid}", headers=CHANNEL).status_code == 200
    with full_database(STATE.deps.ledger.engine):
        r = _until_refused(lambda _: client.get(f"/profile/{cid}", headers=CHANNEL))[1]
    assert (r.status_code, r.json()) == (
        503,
        {"error": "ledger: OperationalError: database or disk is full", "field": "ledger"},
    )
