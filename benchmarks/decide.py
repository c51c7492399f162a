"""``nextbest bench decide``: /decide against an empty BentoML endpoint measured in the same run.

Figures, not pass/fail: sequential p50/p99 over one keep-alive connection, closed-loop
throughput and p99 from a separate client process at several concurrencies, and open-loop
p99 at half the saturating rate. Both servers run side by side and every measurement
alternates floor/decide, so load from elsewhere on the machine hits both alike; ratios to the
floor are what travel between machines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.progress import Progress

from nextbest.settings import PROJECT_ROOT, Settings
from serving import run

TARGETS = {"floor": "benchmarks.floor:Floor", "decide": "serving.service:Nextbest"}
# /decide's pipeline behind BentoML's adaptive batching instead of the service's own batcher
ADAPTIVE = {"adaptive": "benchmarks.adaptive:Adaptive"}
BODY = {"customer_id": "bench{i:06d}", "channel": "web", "context": {"page": "home"}}
BODIES = {"adaptive": {"requests": [BODY]}}  # a batchable BentoML API takes a list


def body_for(name: str, i: int) -> dict[str, Any]:
    """Target ``name``'s request for synthetic customer ``i``."""
    one = {**BODY, "customer_id": BODY["customer_id"].format(i=i)}
    return {"requests": [one]} if name in BODIES else one


def prepare_features(settings: Settings, customers: int) -> dict[str, Any]:
    """A real Feast online store with ``customers`` synthetic profiles (H3's bench data), so
    /decide pays for a real online read."""
    from benchmarks.features import _synthetic_snapshots
    from features.store import apply_repo, get_store, materialize

    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    _synthetic_snapshots(settings, customers, end)
    register_customers(settings, [f"bench{i:06d}" for i in range(customers)])
    store = get_store(settings)
    apply_repo(store)
    return materialize(store, end=end + timedelta(seconds=1), start=end - timedelta(days=1))


def register_customers(settings: Settings, customer_ids: list[str]) -> None:
    """The synthetic customers in the identity graph, as a features build leaves real ones:
    /decide reads features only for a customer_id the graph knows (else: an unknown visitor)."""
    from features import graph_store as gs
    from features.identity import graph_for

    graph = graph_for(settings)
    with graph.engine.begin() as conn:
        col = gs.customers.c.customer_id
        have = {c for (c,) in gs.fetch(conn, col, list(customer_ids), col)}
        new = [c for c in dict.fromkeys(customer_ids) if c not in have]
        gs.write_batch(conn, new, [], set(), datetime.now(UTC))


def prepare_models(settings: Settings) -> dict[str, Any]:
    """Promoted churn and uplift models and a bandit, trained on a small simulated world, so
    /decide pays for the whole pipeline (scores, arbitration, the bandit), not a fallback."""
    from benchmarks.replay import run_replay
    from benchmarks.replay_harness import ensure_models, ensure_world

    ensure_world(settings, customers=400, days=90)
    versions: dict[str, Any] = ensure_models(settings, max_rounds=200)
    replay = run_replay(settings, 1500, retrain_every=500, plot=False, progress=False)
    versions["bandit_retrains"] = len(replay.retrains)  # promoted into the home's store
    return versions


def _loadgen(
    url: str, key: str, mode: str, seconds: float, customers: int, body: dict, **opts: Any
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--url",
        url,
        "--body",
        json.dumps(body),
        "--key",
        key,
        "--mode",
        mode,
        "--seconds",
        str(seconds),
        "--customers",
        str(customers),
    ]
    for k, v in opts.items():
        cmd += [f"--{k}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu_seconds(pid: int) -> float:
    """CPU time of a server and all its workers: unlike wall-clock throughput, CPU per
    request does not depend on what else the machine is running."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _sequential(url: str, key: str, n: int, customers: int, name: str) -> dict[str, float]:
    lat = []
    with httpx.Client(headers={"X-API-Key": key}, timeout=10) as client:
        for i in range(n + 50):
            body = body_for(name, i % customers)
            t0 = time.perf_counter()
            r = client.post(url, json=body)
            dt = time.perf_counter() - t0
            r.raise_for_status()
            if i >= 50:  # warm-up
                lat.append(dt * 1000.0)
    return {
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
    }


def _measure(
    settings: Settings,
    concurrencies: list[int],
    seconds: float,
    n_seq: int,
    customers: int,
    progress: Progress,
    targets: dict[str, str],
) -> dict[str, dict[str, Any]]:
    ports = {name: run.free_port() for name in targets}
    procs = {
        # no background report build competing with the measured requests
        name: run.start(
            settings,
            ports[name],
            target,
            log=settings.home / f"bench-{name}.log",
            NEXTBEST_REPORT_EVERY_MINUTES="0",
        )
        for name, target in targets.items()
    }
    key = settings.channel_keys[0]
    urls = {n: f"http://127.0.0.1:{p}/decide" for n, p in ports.items()}
    steps = 2 * (2 + len(concurrencies))
    task = progress.add_task("starting servers", total=steps)
    out: dict[str, dict[str, Any]] = {n: {"closed": {}} for n in targets}
    try:
        for name, proc in procs.items():
            run.wait_ready(proc, ports[name], timeout=120)
        for name in targets:
            progress.update(task, description=f"{name}: sequential", advance=1)
            out[name]["sequential"] = _sequential(urls[name], key, n_seq, customers, name)
        for c in concurrencies:
            for name in targets:
                progress.update(task, description=f"{name}: {c} connections", advance=1)
                cpu0 = _cpu_seconds(procs[name].pid)
                body = BODIES.get(name, BODY)
                res = _loadgen(urls[name], key, "closed", seconds, customers, body, concurrency=c)
                cpu_ms = (_cpu_seconds(procs[name].pid) - cpu0) * 1000.0
                res["server_cpu_ms_per_request"] = round(cpu_ms / max(res["requests"], 1), 3)
                out[name]["closed"][str(c)] = res
        for name in targets:
            sat = max(r["rps"] for r in out[name]["closed"].values())
            progress.update(task, description=f"{name}: open loop at {sat / 2:.0f}/s", advance=1)
            out[name]["saturation_rps"] = sat
            out[name]["open_half"] = _loadgen(
                urls[name], key, "open", seconds, customers, BODIES.get(name, BODY),
                rate=round(sat / 2, 1),
            )  # fmt: skip
        # after the load: a part that failed during the run shows here
        out["decide"]["health"] = httpx.get(
            f"http://127.0.0.1:{ports['decide']}/healthz",
            headers={"X-API-Key": settings.admin_keys[0]},  # the reasons are the admin's
        ).json()
        return out
    finally:
        for proc in procs.values():
            run.stop(proc)


def bench_decide(
    settings: Settings | None = None,
    concurrencies: list[int] | None = None,
    seconds: float = 5.0,
    n_seq: int = 500,
    customers: int = 1000,
    workers: int | None = None,
    adaptive: bool = False,
) -> dict[str, Any]:
    """Floor and /decide in one run (``adaptive``: and /decide's pipeline behind BentoML's
    adaptive batching, ``benchmarks.adaptive``). Without ``settings`` a fresh home gets
    promoted models (trained on a small world) and a real Feast store of synthetic customers;
    with it, the home as it is."""
    concurrencies = concurrencies or [8, 32]
    with (
        tempfile.TemporaryDirectory(prefix="nextbest-bench-") as tmp,
        Progress(transient=True) as progress,
    ):
        prepared: dict[str, Any] | str = "existing home"
        if settings is None:
            settings = Settings(home=Path(tmp)).ensure_dirs()
            progress.add_task("training models, preparing a feature store", total=None)
            prepared = {"models": prepare_models(settings)}
            prepared["features"] = prepare_features(settings, customers)
        if workers is not None:
            settings = settings.model_copy(update={"workers": workers})
        targets = {**TARGETS, **(ADAPTIVE if adaptive else {})}
        figures = _measure(settings, concurrencies, seconds, n_seq, customers, progress, targets)
    floor, decide = figures["floor"], figures["decide"]
    ratio = decide["saturation_rps"] / floor["saturation_rps"]
    p50_gap = decide["sequential"]["p50_ms"] - floor["sequential"]["p50_ms"]
    p99_half = decide["open_half"]["p99_ms"]
    top = str(max(concurrencies))
    cpu_ratio = (
        floor["closed"][top]["server_cpu_ms_per_request"]
        / decide["closed"][top]["server_cpu_ms_per_request"]
    )
    compared = {}
    if adaptive:  # the same three goals' figures for BentoML's adaptive batching
        other = figures["adaptive"]
        compared = {
            "adaptive": other,
            "adaptive_throughput_ratio": round(
                other["saturation_rps"] / floor["saturation_rps"], 3
            ),
            "adaptive_p50_gap_ms": round(
                other["sequential"]["p50_ms"] - floor["sequential"]["p50_ms"], 3
            ),
            "adaptive_p99_half_saturation_ms": other["open_half"]["p99_ms"],
        }
    return {
        **compared,
        "workers": settings.workers,
        "ledger_synchronous": settings.ledger_synchronous,
        "features": prepared,
        "floor": floor,
        "decide": decide,
        "throughput_ratio": round(ratio, 3),
        "cpu_per_request_ratio": round(cpu_ratio, 3),  # floor / decide at the top concurrency
        "p50_gap_ms": round(p50_gap, 3),
        "p99_half_saturation_ms": p99_half,
        "goals": {
            "throughput_ratio>=0.7": ratio >= 0.7,
            "p50_gap<=1.5ms": p50_gap <= 1.5,
            "p99_half<10ms": p99_half < 10.0,
        },
    }
