"""The parts ``nextbest bench journeys`` is built from: a bench home, ledgers to run on, rows
written in bulk, runner processes, and the floor (a bare insert into the same database).

Instances are written here as ``serving.journey_runner.enter`` writes a treated customer's
(on the first step, due now) or as a runner leaves one on a 30-day wait, but in bulk: the
bench measures the runner, not a million entries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, delete, func, select, text

from journeys.definition import Journey
from journeys.state import journey_instances, journey_steps, journey_versions
from nextbest.db import scratch_postgres
from nextbest.settings import PROJECT_ROOT, Settings
from record.tables import metadata, outbox

NAME = "bench_journey"
# Entered on a product view (no idle: at once), an e-mail through the /decide pipeline, then a
# 30-day wait: each claim takes two steps (the message and the wait) in one transaction.
JOURNEY_YAML = f"""\
name: {NAME}
description: The bench's journey - an e-mail on a product view, then a month's wait.
offers: [device_upgrade, data_addon, streaming_bundle, family_plan, prepaid_to_postpaid]
entry: {{type: intent, event: product_view, channels: [web]}}
goal: {{event: purchase, product: any, within: 30d}}
exit: [{{event: purchase}}]
rules: {{holdout_share: 0.0, reentry_after: 1d}}
steps:
  - {{id: email, type: message, channel: email, next: month}}
  - {{id: month, type: wait, duration: 30d, next: done}}
  - {{id: done, type: exit}}
"""
CUSTOMER = "bench{:06d}"  # the feature store's synthetic customers (benchmarks.features)
WAITER = "wait{:07d}"  # customers on the 30-day wait: never due during the bench
CONTEXT = json.dumps({"event": "product_view", "channel": "web", "basket": []})


def write_journey(settings: Settings) -> None:
    folder = settings.journeys_path
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{NAME}.yaml").write_text(JOURNEY_YAML, encoding="utf-8")


def know_customers(settings: Settings, url: str, n: int) -> None:
    """The synthetic customers as the identity graph's people (in the ledger's database), as
    a resolved world's are: an event naming ``bench000001`` then lands on that customer (and
    their features), not on a new person derived from an unknown id."""
    from features import graph_store as gs
    from features.identity import graph_for

    graph = graph_for(settings.model_copy(update={"ledger_url": url}))
    with graph.engine.begin() as conn:
        gs.write_batch(conn, [CUSTOMER.format(i) for i in range(n)], [], set(), datetime.now(UTC))


# --- ledgers ----------------------------------------------------------------------------------
@contextmanager
def ledger_url(kind: str, home: Path) -> Iterator[str]:
    """A ledger of the bench's own: a SQLite file in the home, or a PostgreSQL database
    created for this run and dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{home / 'bench-ledger.db'}"
        return
    with scratch_postgres("nb_bench") as url:
        yield url


def floor(engine: Engine, n: int) -> dict[str, float]:
    """A bare insert: one small row into a table of the same database, in its own transaction,
    ``n`` times in a row. The median and p99 cost (ms) and the rate (rows/s)."""
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_floor"))
        conn.execute(text("CREATE TABLE bench_floor (id INTEGER PRIMARY KEY, v VARCHAR(32))"))
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO bench_floor (id, v) VALUES (:i, :v)"), {"i": i, "v": "x"}
            )
        lat.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000.0
    return {
        "insert_p50_ms": round(float(np.percentile(ms, 50)), 3),
        "insert_p99_ms": round(float(np.percentile(ms, 99)), 3),
        "inserts_per_s": round(n / elapsed, 1),
    }


def analyze(engine: Engine) -> None:
    """PostgreSQL: planner statistics, as autovacuum keeps them on a ledger in use. Without
    them (a database created minutes ago) one runner took 18 ms an instance, with them 8."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def clear(engine: Engine) -> None:
    """Everything the last phase wrote (decisions, outbox, steps, its customers' instances),
    so the next one starts with no contact history (caps) and only the waiting instances."""
    keep = {"journey_instances", "journey_versions"}
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            if table.name not in keep:
                conn.execute(delete(table))
        c = journey_instances.c
        conn.execute(delete(journey_instances).where(c.customer_id.not_like("wait%")))


# --- rows in bulk -----------------------------------------------------------------------------
COLUMNS = ("instance_id", "journey", "version", "customer_id", "arm", "status", "step_id",
           "step_seq", "due_at", "entered_at", "context")  # fmt: skip


def _row(j: Journey, customer_id: str, step: str, due: datetime, entered: datetime) -> tuple:
    return (uuid.uuid4().hex, j.name, j.version, customer_id, "treatment", "active", step, 0,
            due, entered, CONTEXT)  # fmt: skip


def insert_rows(engine: Engine, rows: list[tuple]) -> None:
    """Rows of ``COLUMNS`` in one transaction: PostgreSQL by COPY, SQLite by executemany."""
    cols = ", ".join(COLUMNS)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "postgresql":
            with cur.copy(f"COPY journey_instances ({cols}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                for r in rows:
                    copy.write_row(r)
        else:
            marks = ", ".join("?" * len(COLUMNS))
            stamped = [(*r[:8], _sqlite_time(r[8]), _sqlite_time(r[9]), r[10]) for r in rows]
            cur.executemany(f"INSERT INTO journey_instances ({cols}) VALUES ({marks})", stamped)
        raw.commit()
    finally:
        raw.close()


def _sqlite_time(ts: datetime) -> str:
    """As SQLAlchemy stores a UTC time in SQLite (text compared as text: one format only)."""
    return f"{ts:%Y-%m-%d %H:%M:%S.%f}"


def add_waiting(engine: Engine, j: Journey, start: int, stop: int, now: datetime) -> None:
    """Customers ``start..stop-1`` on the 30-day wait (on ``done``, due in 30 days)."""
    chunk = 100_000
    for lo in range(start, stop, chunk):
        due = now + timedelta(days=30)
        rows = [
            _row(j, WAITER.format(i), "done", due, now) for i in range(lo, min(stop, lo + chunk))
        ]
        insert_rows(engine, rows)
    analyze(engine)


def add_due(engine: Engine, j: Journey, customers: range, now: datetime) -> None:
    """Treated customers just entered: on the first step, due now, all in one commit."""
    insert_rows(engine, [_row(j, CUSTOMER.format(i), j.first.id, now, now) for i in customers])


def store_version(engine: Engine, j: Journey, now: datetime) -> None:
    from serving.journey_defs import sync_versions

    sync_versions([j], engine)
    with engine.connect() as conn:
        q = select(func.count()).select_from(journey_versions)
        assert conn.execute(q).scalar_one() >= 1


def counts(engine: Engine, now: datetime) -> dict[str, int]:
    """Due instances, steps logged, sent steps, outbox rows, distinct message ids and
    customers in the outbox: each sent step's message is there exactly once."""
    c = journey_instances.c
    with engine.connect() as conn:
        due = conn.execute(
            select(func.count()).where(c.status == "active", c.due_at <= now)
        ).scalar_one()
        steps = conn.execute(select(func.count()).select_from(journey_steps)).scalar_one()
        sent = conn.execute(
            select(func.count()).where(journey_steps.c.result == "sent")
        ).scalar_one()
        messages = conn.execute(select(func.count()).select_from(outbox)).scalar_one()
        distinct = conn.execute(select(func.count(func.distinct(outbox.c.message_id)))).scalar_one()
        people = conn.execute(select(func.count(func.distinct(outbox.c.customer_id)))).scalar_one()
    return {"due": due, "steps": steps, "sent": sent, "outbox": messages,
            "outbox_messages": distinct, "outbox_customers": people}  # fmt: skip


# --- runner processes -------------------------------------------------------------------------
def start_runners(settings: Settings, url: str, n: int, poll: float, tag: str) -> list[Any]:
    """``n`` processes of ``nextbest journeys run`` on ``url``, once each says it is polling."""
    env = {**os.environ, "NEXTBEST_HOME": str(settings.home), "NEXTBEST_LEDGER_URL": url,
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(PROJECT_ROOT)}  # fmt: skip
    cmd = [sys.executable, "-m", "nextbest.cli", "journeys", "run", "--poll", str(poll)]
    procs = []
    for k in range(n):
        log = settings.home / f"runner-{tag}-{k}.log"
        with log.open("w") as out:
            procs.append(
                (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), log)
            )
    deadline = time.monotonic() + 180
    for proc, log in procs:
        while "polling every" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_runners(procs)
                raise RuntimeError(f"journey runner did not start: {log.read_text()[-500:]}")
            time.sleep(0.1)
    return procs


def cpu_seconds(procs: list[Any]) -> float:
    """User and system CPU time of the runner processes so far."""
    import psutil

    total = 0.0
    for proc, _ in procs:
        t = psutil.Process(proc.pid).cpu_times()
        total += t.user + t.system
    return total


def stop_runners(procs: list[Any]) -> None:
    for proc, _ in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc, _ in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
