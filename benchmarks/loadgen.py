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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True, help="JSON request template")
    ap.add_argument("--key", default="")
    ap.add_argument("--mode", choices=["closed", "open"], required=True)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--customers", type=int, default=1000)
    a = ap.parse_args()
    payloads = bodies(json.loads(a.body), a.customers)
    headers = {"content-type": "application/json", **({"X-API-Key": a.key} if a.key else {})}
    if a.mode == "closed":
        result = asyncio.run(closed(a.url, payloads, headers, a.concurrency, a.seconds))
    else:
        result = asyncio.run(open_loop(a.url, payloads, headers, a.rate, a.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
