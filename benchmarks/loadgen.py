"""The load client, run as its own process so it does not share the server's event loop.

Closed loop (fixed concurrency, as fast as answers come back) measures saturation; open loop
(Poisson arrivals at a fixed rate, latency counted from the scheduled send time so queueing
is not hidden) measures the latency a given load really sees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import numpy as np


def summary(lat_s: list[float], elapsed: float, errors: int) -> dict[str, float]:
    ms = np.asarray(lat_s) * 1000.0
    return {
        "requests": int(ms.size),
        "errors": errors,
        "rps": round(ms.size / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if ms.size else float("nan"),
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if ms.size else float("nan"),
    }


def bodies(template: dict, n_customers: int) -> list[bytes]:
    """Pre-encoded bodies: one per synthetic customer, so caps and features vary."""
    out = []
    for i in range(n_customers):
        body = dict(template)
        if "customer_id" in body:
            body["customer_id"] = body["customer_id"].format(i=i)
        if isinstance(body.get("requests"), list):  # a batch API's body (bench decide --adaptive)
            body["requests"] = [
                {**r, "customer_id": r["customer_id"].format(i=i)} for r in body["requests"]
            ]
        out.append(json.dumps(body).encode())
    return out


async def closed(url: str, payloads: list[bytes], headers: dict, conc: int, seconds: float) -> dict:
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with session.post(url, data=payloads[i % len(payloads)]) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t0)
                i += conc

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(conc)))
        return summary(lat, time.perf_counter() - t0, errors)


async def open_loop(
    url: str, payloads: list[bytes], headers: dict, rate: float, seconds: float
) -> dict:
    lat: list[float] = []
    errors = 0
    rng = random.Random(7)
    conn = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:

        async def one(i: int, scheduled: float) -> None:
            nonlocal errors
            async with session.post(url, data=payloads[i % len(payloads)]) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            lat.append(time.perf_counter() - scheduled)

        tasks, start, t, i = [], time.perf_counter(), 0.0, 0
        while t < seconds:
            t += rng.expovariate(rate)
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, start + t)))
            i += 1
        await asyncio.gather(*tasks)
        return summary(lat, time.perf_counter() - start, errors) | {"target_rps": rate}


# The soak's mix: mostly decisions, some outcomes for them and events, a few profile reads.
MIX = {"decide": 0.80, "outcome": 0.08, "events": 0.10, "profile": 0.02}
NEW_VISITORS = 0.2  # share of decisions for a customer id never seen before


def _soak_request(
    kind: str, i: int, customer: str, decided: list[str], seen: list[str], rng: random.Random
) -> tuple[str, str, bytes | None]:
    """(method, path, body) of one soak request; an outcome needs a decision to refer to, a
    profile read a customer an event made known (else it decides)."""
    if kind == "outcome" and decided:
        body = {"idempotency_key": f"soak-{i}", "decision_id": rng.choice(decided), "type": "click"}
        return "POST", "/outcome", json.dumps(body).encode()
    if kind == "events":
        ts = datetime.now(UTC).isoformat()
        # by e-mail, as a web channel knows a visitor: the graph links it to a customer
        body = {"event_id": f"soak-{i}", "ts": ts, "channel": "web",
                "email": f"{customer}@soak.example.com", "event_type": "product_view",
                "product_id": "data_10gb"}  # fmt: skip
        return "POST", "/events", json.dumps(body).encode()
    if kind == "profile" and seen:
        return "GET", f"/profile/{rng.choice(seen)}?channel=call_centre", None
    if rng.random() < NEW_VISITORS:  # a first visit: caches keyed by customer must not grow
        customer = f"new-{i}"
    body = {"customer_id": customer, "channel": "web", "context": {"page": "home"}}
    return "POST", "/decide", json.dumps(body).encode()


def windows(records: list[tuple[float, str, float, int]], window: float) -> list[dict[str, Any]]:
    """Per window of ``window`` seconds (by scheduled send time): requests, errors (anything but
    a 2xx, or no answer), p50 and p99 over every kind, and each kind's count."""
    out: dict[int, list[tuple[float, str, float, int]]] = {}
    for rec in records:
        out.setdefault(int(rec[0] // window), []).append(rec)
    rows = []
    for k in range(max(out, default=-1) + 1):
        recs = out.get(k, [])
        lat = [r[2] for r in recs]
        errors = sum(1 for r in recs if not 200 <= r[3] < 300)
        row = summary(lat, window, errors) | {"start_s": round(k * window, 3)}
        row["kinds"] = {kind: sum(1 for r in recs if r[1] == kind) for kind in MIX}
        rows.append(row)
    return rows


async def soak(
    base: str, headers: dict, rate: float, seconds: float, customers: int, window: float
) -> dict[str, Any]:
    """Open loop at ``rate`` a second (Poisson arrivals) of the ``MIX``; prints ``{"start":
    true}`` when the clock starts (the parent aligns its memory samples on it)."""
    rng = random.Random(11)
    records: list[tuple[float, str, float, int]] = []
    statuses: dict[str, dict[str, int]] = {kind: {} for kind in MIX}
    decided: list[str] = []  # recent decision ids, for outcomes
    seen: list[str] = []  # customers of recent events, for profile reads
    kinds, weights = list(MIX), list(MIX.values())
    conn = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=conn, headers=headers, timeout=timeout) as session:

        async def one(i: int, offset: float, kind: str) -> None:
            customer = f"bench{rng.randrange(customers):06d}"
            method, path, data = _soak_request(kind, i, customer, decided, seen, rng)
            kind = path.split("/")[1].split("?")[0]  # an outcome with nothing to refer to decides
            try:
                async with session.request(method, base + path, data=data) as r:
                    payload = await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            if status == 200 and kind == "decide":
                decided.append(json.loads(payload)["decision_id"])
                del decided[:-1000]
            elif status == 200 and kind == "events":  # the customer the graph linked it to
                seen.append(json.loads(payload)["customer_id"])
                del seen[:-1000]
            latency = time.perf_counter() - (start + offset)
            records.append((offset, kind, latency, status))
            statuses[kind][str(status)] = statuses[kind].get(str(status), 0) + 1

        tasks: set[asyncio.Task] = set()
        start, t, i = time.perf_counter(), 0.0, 0
        print(json.dumps({"start": True}), flush=True)
        while True:
            t += rng.expovariate(rate)
            if t >= seconds:
                break
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i, t, rng.choices(kinds, weights)[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
    total = summary([r[2] for r in records], seconds, sum(1 for r in records if r[3] // 100 != 2))
    return total | {"target_rps": rate, "statuses": statuses, "windows": windows(records, window)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", default="{}", help="JSON request template (closed, open)")
    ap.add_argument("--key", default="")
    ap.add_argument("--mode", choices=["closed", "open", "soak"], required=True)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--customers", type=int, default=1000)
    ap.add_argument("--window", type=float, default=60.0, help="soak: seconds per row")
    a = ap.parse_args()
    payloads = bodies(json.loads(a.body), a.customers)
    headers = {"content-type": "application/json", **({"X-API-Key": a.key} if a.key else {})}
    if a.mode == "soak":  # --url is the base URL
        result = asyncio.run(soak(a.url, headers, a.rate, a.seconds, a.customers, a.window))
    elif a.mode == "closed":
        result = asyncio.run(closed(a.url, payloads, headers, a.concurrency, a.seconds))
    else:
        result = asyncio.run(open_loop(a.url, payloads, headers, a.rate, a.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
