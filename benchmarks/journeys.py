"""``nextbest bench journeys``: event -> outbox latency and runner throughput, against a floor.

The floor is a bare insert into the same database in the same run (one small row, its own
transaction): ratios to it are what travel between machines and loads.

- Latency: events offered at a fixed rate (Poisson arrivals) through ``serving.actions.ingest``,
  the function the service's ``/events`` calls, in process on a pool of threads; each makes a
  customer enter a journey whose first step is an e-mail. A separate ``nextbest journeys run``
  process takes the due steps. Latency runs from the event's scheduled arrival (so a load
  generator falling behind shows as latency) until a watcher sees the outbox row committed.
- Throughput: many instances due at once on a journey with a message and a wait step, taken
  by 1 and 3 runner processes, with few and with many instances waiting (not due) beside them.

The parts are the service's (``load_deps``): a real ledger, catalogue and journeys, a real Feast
store of synthetic customers (consent included), and the /decide pipeline inside each message
step; no promoted models, so decisions fall back to exploration over the allowed offers.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from rich.progress import Progress
from sqlalchemy import Engine, func, select

from benchmarks import journey_parts as parts
from journeys.definition import Journey
from journeys.state import journey_instances
from nextbest.db import postgres_unavailable
from nextbest.settings import Settings
from record.tables import outbox


class Sizes(BaseModel):
    """How big each phase is: ``quick`` for a test, ``full`` for the figures."""

    rate: float  # events offered per second
    seconds: float  # of offered load
    due: int  # instances due at once in a throughput phase
    waiting_few: int
    waiting_many: int
    floor_inserts: int
    poll: float  # the runners' idle poll (s): a bound on event -> outbox latency


FULL = Sizes(rate=200, seconds=20, due=3000, waiting_few=1000, waiting_many=1_000_000,
             floor_inserts=300, poll=0.05)  # fmt: skip
QUICK = Sizes(rate=200, seconds=1.5, due=120, waiting_few=100, waiting_many=2000,
              floor_inserts=50, poll=0.05)  # fmt: skip
WARMUP = 10  # instances per runner taken before a throughput phase is timed


def _ms(x: list[float]) -> dict[str, float]:
    arr = np.asarray(x) * 1000.0
    if not arr.size:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    return {"p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p99_ms": round(float(np.percentile(arr, 99)), 2)}  # fmt: skip


def _wait_drained(engine: Engine, limit: float) -> float:
    """Poll until no instance is due; the seconds it took."""
    c = journey_instances.c
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        with engine.connect() as conn:
            now = datetime.now(UTC)
            q = select(func.count()).where(c.status == "active", c.due_at <= now)
            if conn.execute(q).scalar_one() == 0:
                return time.perf_counter() - t0
        time.sleep(0.02)
    raise TimeoutError(f"instances still due after {limit:.0f}s: is a runner stuck?")


# --- event -> outbox --------------------------------------------------------------------------
class _Watcher(threading.Thread):
    """Sees outbox rows as they are committed: customer -> first wall time seen, and the row's
    ``created_at`` (the runner's clock when its step began)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.engine, self.seen, self.created = engine, {}, {}
        self.stop = threading.Event()

    def run(self) -> None:
        since = datetime.now(UTC) - timedelta(seconds=1)
        while not self.stop.is_set():
            with self.engine.connect() as conn:
                q = select(outbox.c.customer_id, outbox.c.created_at)
                rows = conn.execute(q.where(outbox.c.created_at >= since)).all()
            at = time.time()
            for cid, created in rows:
                if cid not in self.seen:
                    self.seen[cid] = at
                    self.created[cid] = created.replace(tzinfo=UTC).timestamp()
            if rows:  # one runner writes in its clock's order: a second's margin is plenty
                since = max(r[1] for r in rows).replace(tzinfo=UTC) - timedelta(seconds=1)
            time.sleep(0.005)


def latency(settings: Settings, url: str, size: Sizes, progress: Progress) -> dict[str, Any]:
    """Events at ``size.rate`` for ``size.seconds`` through the ingest path; one runner."""
    from serving.actions import ingest
    from serving.deps import load_deps

    s = settings.model_copy(update={"ledger_url": url})
    deps = load_deps(s, bandit=None)  # as the service loads them (no bandit: it is not in play)
    parts.clear(deps.ledger.engine)
    parts.analyze(deps.ledger.engine)
    n = int(size.rate * size.seconds)
    task = progress.add_task(f"{url.split(':')[0]}: {n} events at {size.rate:.0f}/s", total=n)
    runners = parts.start_runners(s, url, 1, size.poll, "latency")
    watcher = _Watcher(deps.ledger.engine)
    watcher.start()
    arrival: dict[str, float] = {}
    took: list[float] = []
    entered: list[int] = []

    def one(cid: str) -> None:
        t = time.perf_counter()
        body = {"event_id": uuid.uuid4().hex, "ts": datetime.now(UTC).isoformat(),
                "channel": "web", "event_type": "product_view", "customer_id": cid}  # fmt: skip
        out = ingest(body, deps)
        took.append(time.perf_counter() - t)
        entered.append(int(out.get("journeys_entered", 0)))
        progress.advance(task)

    try:
        gaps = np.random.default_rng(7).exponential(1.0 / size.rate, n)
        start = time.time() + 0.2
        with ThreadPoolExecutor(max_workers=4) as pool:
            for i, at in enumerate(start + np.cumsum(gaps)):
                time.sleep(max(0.0, at - time.time()))
                cid = parts.CUSTOMER.format(i)
                arrival[cid] = float(at)  # the scheduled arrival: queueing here counts
                pool.submit(one, cid)
        offered_for = time.time() - start
        _wait_drained(deps.ledger.engine, 120)
        time.sleep(0.3)  # the watcher's last look
    finally:
        watcher.stop.set()
        watcher.join()
        parts.stop_runners(runners)
    seen = [watcher.seen[c] - arrival[c] for c in watcher.seen if c in arrival]
    begun = [watcher.created[c] - arrival[c] for c in watcher.created if c in arrival]
    counts = parts.counts(deps.ledger.engine, datetime.now(UTC))
    return {
        "events": n,
        "achieved_rate": round(len(took) / offered_for, 1),
        "entered": sum(entered),
        "messages": len(seen),
        "ingest": _ms(took),
        "event_to_outbox": _ms(seen),  # committed, as a watcher polling every 5 ms sees it
        "event_to_step_start": _ms(begun),  # outbox.created_at: when the runner took it
        "counts": {k: v for k, v in counts.items() if k != "due"},
    }


# --- throughput -------------------------------------------------------------------------------
def throughput(
    settings: Settings, url: str, j: Journey, runners: int, size: Sizes, tag: str
) -> dict[str, Any]:
    """``size.due`` instances due at once, taken by ``runners`` processes: steps per second
    from their commit until none is due."""
    from nextbest.db import engine_for

    engine = engine_for(url)
    parts.clear(engine)
    procs = parts.start_runners(settings, url, runners, size.poll, tag)
    try:
        warm = range(size.due, size.due + WARMUP * runners)  # Feast and caches warmed
        parts.add_due(engine, j, warm, datetime.now(UTC))
        _wait_drained(engine, 120)
        parts.analyze(engine)
        before = parts.counts(engine, datetime.now(UTC))
        cpu0 = parts.cpu_seconds(procs)
        parts.add_due(engine, j, range(size.due), datetime.now(UTC))
        seconds = _wait_drained(engine, 1800)
        cpu = parts.cpu_seconds(procs) - cpu0
        after = parts.counts(engine, datetime.now(UTC))
    finally:
        parts.stop_runners(procs)
    steps = after["steps"] - before["steps"]
    return {
        "runners": runners,
        "due": size.due,
        "seconds": round(seconds, 2),
        "steps": steps,
        "steps_per_s": round(steps / seconds, 1),
        "instances_per_s": round(size.due / seconds, 1),
        # the runners' own CPU per step: flat from 1 to 3 runners means the cores, not the
        # database's locks, bound the scaling (2 cores: 3 busy runners cannot make 3x)
        "runner_cpu_ms_per_step": round(cpu * 1000.0 / max(steps, 1), 3),
        "runner_cores_busy": round(cpu / seconds, 2),
        "messages": after["outbox"] - before["outbox"],
        "sent_steps": after["sent"] - before["sent"],
        "counts": {k: v for k, v in after.items() if k != "due"},
    }


def run_database(
    kind: str, settings: Settings, j: Journey, size: Sizes, customers: int, progress: Progress
) -> dict[str, Any]:
    """Floor, latency and the four throughput phases on one kind of database."""
    from nextbest.db import engine_for
    from record.ledger import Ledger

    out: dict[str, Any] = {}
    task = progress.add_task(f"{kind}: floor", total=7)
    with parts.ledger_url(kind, settings.home) as url:
        engine = Ledger(engine_for(url), synchronous=settings.ledger_synchronous).engine
        now = datetime.now(UTC)
        parts.store_version(engine, j, now)
        parts.know_customers(settings, url, customers)
        out["floor"] = parts.floor(engine, size.floor_inserts)
        progress.update(task, advance=1, description=f"{kind}: event -> outbox")
        out["latency"] = latency(settings, url, size, progress)
        parts.add_waiting(engine, j, 0, size.waiting_few, now)
        phases = [(1, "few"), (3, "few"), (1, "many"), (3, "many")]
        for runners, waiting in phases:
            if waiting == "many" and "waiting_many_inserted_s" not in out:
                progress.update(
                    task, advance=1, description=f"{kind}: {size.waiting_many:,} waiting"
                )
                t = time.perf_counter()
                parts.add_waiting(engine, j, size.waiting_few, size.waiting_many, now)
                out["waiting_many_inserted_s"] = round(time.perf_counter() - t, 1)
            label = f"runners_{runners}_waiting_{waiting}"
            progress.update(task, advance=1, description=f"{kind}: {label}")
            out[label] = throughput(settings, url, j, runners, size, f"{kind}-{label}")
        engine.dispose()
    progress.update(task, advance=1)
    return out


def bench_journeys(
    quick: bool = False, postgres: bool = True, rate: float | None = None
) -> dict[str, Any]:
    """Every figure on SQLite and (when it answers) PostgreSQL, in a throw-away home."""
    from benchmarks.decide import prepare_features

    size = QUICK if quick else FULL
    if rate is not None:  # the same seconds of load at another offered rate
        size = size.model_copy(update={"rate": rate})
    customers = max(int(size.rate * size.seconds), size.due + 3 * WARMUP) + 10
    with (
        tempfile.TemporaryDirectory(prefix="nextbest-bench-journeys-") as tmp,
        Progress(transient=True) as progress,
    ):
        settings = Settings(home=Path(tmp)).ensure_dirs()
        progress.add_task(f"a Feast store of {customers} synthetic customers", total=None)
        prepared = prepare_features(settings, customers)
        parts.write_journey(settings)
        from journeys.load import active_journeys

        (j,) = active_journeys(settings)
        kinds = ["sqlite"]
        skipped = postgres_unavailable() if postgres else "not asked (--no-postgres)"
        if skipped is None:
            kinds.append("postgresql")
        by_db = {k: run_database(k, settings, j, size, customers, progress) for k in kinds}
    return summarise(by_db, size, prepared, skipped)


def summarise(
    by_db: dict[str, Any], size: Sizes, prepared: Any, skipped: str | None
) -> dict[str, Any]:
    """The flat figures the issue names, their floors and ratios, and the goals."""
    lite = by_db["sqlite"]
    lat, fl = lite["latency"], lite["floor"]
    out: dict[str, Any] = {
        "sizes": size.model_dump(),
        "features": prepared,
        "models": "none promoted: decisions fall back to exploration over the allowed offers",
        "latency_path": "serving.actions.ingest in process (4 threads), 1 runner process",
        "event_to_outbox_p50_ms": lat["event_to_outbox"]["p50_ms"],
        "event_to_outbox_p99_ms": lat["event_to_outbox"]["p99_ms"],
        "floor_insert_p50_ms": fl["insert_p50_ms"],
        "floor_inserts_per_s": fl["inserts_per_s"],
        "event_to_outbox_p50_floor_ratio": round(
            lat["event_to_outbox"]["p50_ms"] / fl["insert_p50_ms"], 1
        ),
        "event_to_outbox_p99_floor_ratio": round(
            lat["event_to_outbox"]["p99_ms"] / fl["insert_p50_ms"], 1
        ),
        "postgresql": "measured" if skipped is None else skipped,
        "databases": by_db,
    }
    goals: dict[str, bool] = {
        "event_to_outbox_p99<1000ms": lat["event_to_outbox"]["p99_ms"] < 1000.0
    }
    for kind, d in by_db.items():
        for label in ("runners_1_waiting_few", "runners_3_waiting_few",
                      "runners_1_waiting_many", "runners_3_waiting_many"):  # fmt: skip
            sps = d[label]["steps_per_s"]
            out[f"{kind}_{label}_steps_per_s"] = sps
            out[f"{kind}_{label}_floor_ratio"] = round(sps / d["floor"]["inserts_per_s"], 3)
        one, three = d["runners_1_waiting_few"], d["runners_3_waiting_few"]
        out[f"{kind}_scaling_3_vs_1"] = round(three["steps_per_s"] / one["steps_per_s"], 2)
        for r in (1, 3):
            few, many = d[f"runners_{r}_waiting_few"], d[f"runners_{r}_waiting_many"]
            out[f"{kind}_many_vs_few_waiting_{r}_runners"] = round(
                many["steps_per_s"] / few["steps_per_s"], 3
            )
            goals[f"{kind}_many_waiting_within_20%_{r}_runners"] = (
                out[f"{kind}_many_vs_few_waiting_{r}_runners"] >= 0.8
            )
        if kind == "postgresql":
            goals["postgresql_3_runners>=2.5x_1"] = out[f"{kind}_scaling_3_vs_1"] >= 2.5
    out["goals"] = goals
    return out
