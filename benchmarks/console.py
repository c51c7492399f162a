"""``nextbest bench console``: the customer page's server time for a customer with a year of
history, against an empty route of the same app measured in the same run.

Real parts: a Feast online store of synthetic profiles (``benchmarks.decide``'s), the identity
graph, the SQLite ledger holding a year of the customer's decisions and outcomes among other
customers' decisions, and the live event log holding a year of the customer's events. The
pages are served in process (Starlette's test client, no socket), so the figures are the
server's time plus the client's constant cost, which the empty route measures. Requests
alternate page / live part / floor, so load from elsewhere on the machine hits all alike.
"""

from __future__ import annotations

import re
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from nextbest.settings import Settings

TARGET = "bench000000"
CHANNELS = ("web", "app", "store", "call_centre", "email")
TYPES = ("session_start", "product_view", "basket_add", "email_open", "usage", "purchase")


def _history(settings: Settings, deps: Any, end: datetime, per_day: int, others: int) -> dict:
    """A year of the target's events, decisions (one every few days' visits) and outcomes,
    and ``others`` decisions of other customers in the same ledger."""
    from features.events import Event
    from features.ingest import append_event
    from record.tables import DecisionRow, OutcomeRow

    rng = np.random.default_rng(7)
    events = 0
    for day in range(365):
        for k in range(per_day):
            at = end - timedelta(days=365 - day, minutes=int(rng.integers(0, 1440)))
            kind = TYPES[int(rng.integers(0, len(TYPES)))]
            value = float(rng.integers(1, 50)) if kind in ("basket_add", "purchase") else None
            product = "data_10gb" if kind in ("basket_add", "purchase", "product_view") else None
            event = Event(
                event_id=f"h{day}-{k}",
                ts=at,
                channel=CHANNELS[k % len(CHANNELS)],
                event_type=kind,
                customer_id=TARGET,
                value=value,
                product_id=product,
            )
            events += append_event(settings, event, TARGET)

    def row(i: int, cid: str, at: datetime) -> DecisionRow:
        return DecisionRow(
            decision_id=f"d{i:08d}",
            ts=at,
            customer_id=cid,
            channel="web",
            experiment="nbo",
            arm="treatment",
            offer_id="data_addon",
            propensity=0.5,
        )

    mine = [row(i, TARGET, end - timedelta(hours=8.76 * i)) for i in range(1000)]
    theirs = [
        row(1000 + i, f"bench{1 + i % 999:06d}", end - timedelta(minutes=i)) for i in range(others)
    ]
    for start in range(0, len(mine) + len(theirs), 5000):
        deps.ledger.record_decisions((mine + theirs)[start : start + 5000])
    for i in range(0, 1000, 5):
        deps.ledger.record_outcome(
            OutcomeRow(
                idempotency_key=f"o{i}",
                decision_id=f"d{i:08d}",
                customer_id=TARGET,
                type="click",
                value=1.0,
                ts=end - timedelta(hours=8.76 * i),
            )
        )
    return {"events": events, "decisions": len(mine), "outcomes": 200, "other_decisions": others}


def _app(deps: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from serving.console import pages

    async def floor(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/floor", floor), *pages.routes(lambda: deps)])
    return TestClient(app, follow_redirects=False)


def _sign_in(client: Any, key: str) -> None:
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/signin").text)
    r = client.post("/console/signin", data={"key": key, "csrf": token.group(1)})
    if r.status_code != 303:
        raise RuntimeError(f"console: sign-in failed ({r.status_code})")


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.array(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "mean_ms": round(float(a.mean()), 2),
    }


def bench_console(requests: int = 200, per_day: int = 8, others: int = 50_000) -> dict[str, Any]:
    """p50/p95 of the customer page (a decision logged each time), of its live part (polled
    every 0.7 s by the page) and of the empty route, with the page's p95 over the floor's."""
    from benchmarks.decide import prepare_features
    from serving.deps import load_deps

    with tempfile.TemporaryDirectory(prefix="nextbest-bench-console-") as tmp:
        settings = Settings(
            home=Path(tmp), global_holdout_share=0.0, experiment_holdout_share=0.0
        ).ensure_dirs()
        with Progress(transient=True) as bar:
            task = bar.add_task("features, a year of history", total=None)
            prepare_features(settings, 1000)
            deps = load_deps(settings, models=None, bandit=None)
            history = _history(settings, deps, datetime.now(UTC), per_day, others)
            bar.update(task, description="timing")
            client = _app(deps)
            _sign_in(client, settings.console_keys[0].split(":", 2)[2])
            paths = {
                "page": f"/console/customer/{TARGET}",
                "live": f"/console/customer/{TARGET}/live",
                "floor": "/floor",
            }
            for path in paths.values():  # warm: templates compiled, connections open
                for _ in range(5):
                    client.get(path)
            times: dict[str, list[float]] = {k: [] for k in paths}
            for _ in range(requests):
                for name, path in paths.items():
                    t0 = time.perf_counter()
                    r = client.get(path)
                    times[name].append((time.perf_counter() - t0) * 1000)
                    if r.status_code != 200:
                        raise RuntimeError(f"console: {path} answered {r.status_code}")
            client.close()
    out: dict[str, Any] = {"history": history, "requests": requests}
    out |= {name: _stats(ms) for name, ms in times.items()}
    out["page_p95_over_floor"] = round(out["page"]["p95_ms"] / out["floor"]["p95_ms"], 1)
    out["page_p95_minus_floor_ms"] = round(out["page"]["p95_ms"] - out["floor"]["p95_ms"], 2)
    out["live_p95_minus_floor_ms"] = round(out["live"]["p95_ms"] - out["floor"]["p95_ms"], 2)
    return out
