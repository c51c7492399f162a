"""``nextbest bench soak``: a constant rate of mixed requests for minutes against a served home.

Figures, not pass/fail (issue 15): a separate client process (``benchmarks.loadgen``, open
loop, Poisson arrivals) sends mostly ``/decide`` (a fifth of them for new customers), plus
outcomes for those decisions, events and a few profile reads, while this process samples the
resident memory of the served worker processes. Per window (a minute, or a quarter of a short
run): requests, errors, p50, p99 and the workers' RSS; after the warm-up, the RSS slope (least
squares, MiB a minute) and how much p99 moves from one window to the next. Goals for a
30-minute run: 0 errors, p99 within 20% window to window, RSS slope under 0.2 MiB/min after
the first 5 minutes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from nextbest.settings import PROJECT_ROOT, Settings
from serving import run

RSS_EVERY_S = 5.0  # memory samples for the slope (a quarter window in short runs)
GOALS = {"p99_step": 0.20, "rss_slope_mib_per_min": 0.2}


def window_seconds(seconds: float) -> float:
    """A minute, or a quarter of a run shorter than four minutes (so a row table remains)."""
    return 60.0 if seconds >= 240 else seconds / 4


def warmup_seconds(seconds: float, window: float) -> float:
    """The first 5 minutes of a run of 10 or more; else the first fifth, whole windows."""
    if seconds >= 600:
        return 300.0
    return max(1, round(seconds / 5 / window)) * window


def worker_processes(server_pid: int) -> list[Any]:
    """The processes that serve requests: BentoML's service workers under the server (not
    the arbiter, not a report build they start)."""
    import psutil

    found = []
    for proc in psutil.Process(server_pid).children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "serving.reports" not in cmd and "worker" in cmd:
            found.append(proc)
    return found


def rss_mib(procs: list[Any]) -> float:
    import psutil

    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # a worker restarting
            total += proc.memory_info().rss
    return total / 2**20


class RssSampler(threading.Thread):
    """RSS of the workers every ``every`` seconds from the client's start."""

    def __init__(self, procs: list[Any], every: float) -> None:
        super().__init__(daemon=True)
        self.procs, self.every, self.samples = procs, every, []
        self.start_at = time.perf_counter()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.perf_counter() - self.start_at, rss_mib(self.procs)))
            self.done.wait(self.every)


def slope_per_minute(samples: list[tuple[float, float]], after_s: float) -> float | None:
    """Least-squares slope of RSS (MiB) against time (minutes) after the warm-up."""
    pts = [(t / 60, m) for t, m in samples if t >= after_s]
    if len(pts) < 3:
        return None
    t, m = np.array(pts).T
    return round(float(np.polyfit(t, m, 1)[0]), 3)


def max_step(values: list[float]) -> float | None:
    """The largest relative change from one window to the next."""
    steps = [abs(b - a) / a for a, b in zip(values, values[1:], strict=False) if a > 0]
    return round(max(steps), 3) if steps else None


def _client(base: str, key: str, rate: float, seconds: float, customers: int, window: float):
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--mode", "soak", "--url", base,
           "--key", key, "--rate", str(rate), "--seconds", str(seconds),
           "--customers", str(customers), "--window", str(window)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)


def _measure(
    settings: Settings, seconds: float, rate: float, customers: int, log: Path
) -> dict[str, Any]:
    window = window_seconds(seconds)
    port = run.free_port()
    proc = run.start(settings, port, log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        run.wait_ready(proc, port, timeout=120)
        workers = worker_processes(proc.pid)
        client = _client(base, settings.channel_keys[0], rate, seconds, customers, window)
        assert client.stdout is not None
        client.stdout.readline()  # {"start": true}: the client's clock runs
        sampler = RssSampler(workers, min(RSS_EVERY_S, window / 4))
        sampler.start()
        out, _ = client.communicate(timeout=seconds + 120)
        sampler.done.set()
        sampler.join()
        if client.returncode != 0:
            raise RuntimeError(f"the load client exited with code {client.returncode}")
        load = json.loads(out.strip().splitlines()[-1])
        health = httpx.get(f"{base}/healthz", headers={"X-API-Key": settings.admin_keys[0]})
    finally:
        run.stop(proc)
    return {"load": load, "window": window, "rss": sampler.samples, "workers": len(workers),
            "health": health.json()}  # fmt: skip


def summarise(measured: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The per-window table, the slope after warm-up and the goals."""
    load, window, samples = measured["load"], measured["window"], measured["rss"]
    warmup = warmup_seconds(seconds, window)
    rows = []
    for row in load["windows"]:
        end = row["start_s"] + window
        at_end = [m for t, m in samples if t <= end + 0.5]
        rows.append(row | {"rss_mib": round(at_end[-1], 1) if at_end else None})
    steady = [r["p99_ms"] for r in rows if r["start_s"] >= warmup and r["requests"]]
    slope = slope_per_minute(samples, warmup)
    step = max_step(steady)
    first_rss = samples[0][1] if samples else None
    at_warmup = next((m for t, m in samples if t >= warmup), None)
    return {
        "seconds": seconds,
        "window_seconds": window,
        "warmup_excluded_seconds": warmup,
        "target_rps": load["target_rps"],
        "requests": load["requests"],
        "rps": load["rps"],
        "errors": load["errors"],
        "p50_ms": load["p50_ms"],
        "p99_ms": load["p99_ms"],
        "statuses": load["statuses"],
        "workers": measured["workers"],
        "windows": rows,
        "rss_start_mib": round(first_rss, 1) if first_rss is not None else None,
        "rss_after_warmup_mib": round(at_warmup, 1) if at_warmup is not None else None,
        "rss_end_mib": round(samples[-1][1], 1) if samples else None,
        "rss_slope_mib_per_min": slope,
        "p99_max_step": step,
        "health": measured["health"].get("status"),
        "goals": {
            "errors==0": load["errors"] == 0,
            "p99_step<=20%": step is not None and step <= GOALS["p99_step"],
            "rss_slope<0.2MiB/min": slope is not None and slope < GOALS["rss_slope_mib_per_min"],
        },
    }


def bench_soak(
    settings: Settings | None = None,
    minutes: float = 5.0,
    rate: float = 100.0,
    customers: int = 1000,
    workers: int | None = None,
) -> dict[str, Any]:
    """The soak. Without ``settings`` a fresh home gets promoted models and a Feast store of
    synthetic customers (as ``bench decide``); with it, the home as it is."""
    from rich.progress import Progress

    from benchmarks.decide import prepare_features, prepare_models

    seconds = minutes * 60
    with tempfile.TemporaryDirectory(prefix="nextbest-soak-") as tmp:
        prepared: dict[str, Any] | str = "existing home"
        if settings is None:
            settings = Settings(home=Path(tmp)).ensure_dirs()
            with Progress(transient=True) as progress:
                progress.add_task("training models, preparing a feature store", total=None)
                prepared = {"models": prepare_models(settings)}
                prepared["features"] = prepare_features(settings, customers)
        if workers is not None:
            settings = settings.model_copy(update={"workers": workers})
        log = settings.home / "soak-server.log"
        measured = _measure(settings, seconds, rate, customers, log)
    return {"workers_setting": settings.workers, "prepared": prepared} | summarise(
        measured, seconds
    )
