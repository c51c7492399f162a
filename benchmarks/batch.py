"""``nextbest bench batch``: decisions for a whole population, against a floor of feature reads.

Figures, not pass/fail. One home gets promoted models (trained on a small simulated world, as
``bench decide`` does) and a synthetic population written straight into its online store and
identity graph (``benchmarks.population``). Then, in the same run:
- the floor: ``FeatureReader.read_many`` alone, over the same customers in the same batch sizes;
- ``plan_many`` in process at each batch size and over the whole population, with the time
  of each pipeline stage (``serving.stages.StageTimes``);
- ``POST /decide/batch`` through a real server (``serving.run``, as ``bench decide`` starts it);
- per population size, a whole run in its own process: run time and peak RSS.
Wall-clock rates move with whatever else the machine runs; CPU seconds per decision do less,
so both are reported. Ratios to the floor are what travel between machines.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks import population as pop
from nextbest.settings import PROJECT_ROOT, Settings
from serving import run
from serving.stages import STAGES, StageTimes

GOAL_PER_S = 20_000  # issue 14: decisions a second in process on 2 cores
CHANNEL = "email"  # an outbound population run


def _requests(ids: Sequence[str], channel: str) -> list[Any]:
    from serving.schemas import DecideRequest

    return [DecideRequest(customer_id=c, channel=channel) for c in ids]


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[at : at + size] for at in range(0, len(items), size)]


def _clocked(work: Callable[[], Any]) -> tuple[float, float]:
    """Wall and CPU seconds of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def floor_reads(deps: Any, ids: Sequence[str], size: int) -> dict[str, float]:
    """The same customers' feature reads alone, in batches of ``size``."""
    now = deps.clock()

    def work() -> None:
        for part in _chunks(ids, size):
            deps.features.read_many(list(part), now=now)

    wall, cpu = _clocked(work)
    return {
        "reads_per_s": round(len(ids) / wall, 1),
        "cpu_us_per_read": round(cpu / len(ids) * 1e6, 1),
    }


def planned(deps: Any, ids: Sequence[str], size: int, channel: str) -> dict[str, Any]:
    """``plan_many`` over the customers in batches of ``size``: rate, CPU and stage times."""
    from serving.decide import plan_many

    times, fallbacks = StageTimes(), 0

    def work() -> None:
        nonlocal fallbacks
        for part in _chunks(ids, size):  # requests made a batch at a time: memory stays flat
            decided = plan_many(_requests(part, channel), deps, times=times)
            fallbacks += sum(response.fallback for response, _ in decided)

    wall, cpu = _clocked(work)
    n = len(ids)
    return {
        "decisions": n,
        "decisions_per_s": round(n / wall, 1),
        "cpu_us_per_decision": round(cpu / n * 1e6, 1),
        "stages_us_per_decision": {s: round(times.seconds[s] / n * 1e6, 1) for s in STAGES},
        "fallback_share": round(fallbacks / n, 4),
    }


def against_floor(deps: Any, ids: Sequence[str], size: int, channel: str) -> dict[str, Any]:
    """Pipeline then floor on the same customers and batch size; the ratio of their rates.
    The floor reads second, from a store the pipeline's reads warmed: the ratio errs low."""
    out = planned(deps, ids, size, channel)
    out["floor"] = floor_reads(deps, ids, size)
    out["ratio_to_floor"] = round(out["decisions_per_s"] / out["floor"]["reads_per_s"], 4)
    return out


def over_http(settings: Settings, ids: Sequence[str], size: int, channel: str) -> dict[str, Any]:
    """``POST /decide/batch`` in batches of ``size`` through a real server: decided and logged."""
    port = run.free_port()
    proc = run.start(settings, port, log=settings.home / "bench-batch.log",
                     NEXTBEST_REPORT_EVERY_MINUTES="0")  # fmt: skip
    url, headers = f"http://127.0.0.1:{port}/decide/batch", {"X-API-Key": settings.channel_keys[0]}
    bodies = [{"requests": [{"customer_id": c, "channel": channel} for c in part]}
              for part in _chunks(ids, size)]  # fmt: skip
    try:
        run.wait_ready(proc, port, timeout=180)
        with httpx.Client(headers=headers, timeout=600) as client:
            client.post(url, json=bodies[0]).raise_for_status()  # warm-up, not counted
            answered, errors, t0 = 0, 0, time.perf_counter()
            for body in bodies[1:]:
                reply = client.post(url, json=body)
                if reply.status_code == 200:
                    answered += len(reply.json())
                else:
                    errors += 1
            wall = time.perf_counter() - t0
    finally:
        run.stop(proc)
    return {"batch": size, "decisions": answered, "errors": errors,
            "decisions_per_s": round(answered / wall, 1) if wall else None}  # fmt: skip


def whole_run(settings: Settings, customers: int, size: int, channel: str) -> dict[str, Any]:
    """Every one of the first ``customers`` decided in its own process (``main`` below):
    start-up (models, stores) and the run timed apart, and the process's peak RSS."""
    cmd = [sys.executable, "-m", "benchmarks.batch", "--home", str(settings.home),
           "--customers", str(customers), "--size", str(size), "--channel", channel]  # fmt: skip
    env = run.server_env(settings)
    out = subprocess.run(
        cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"whole run of {customers}: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load(settings: Settings, seed: int = 7) -> Any:
    """The pipeline's parts as the service loads them, with a seeded draw."""
    from serving.deps import load_deps

    deps = load_deps(settings)
    deps.rng = random.Random(seed)
    return deps


def prepare(settings: Settings, population: int, progress: Progress) -> dict[str, Any]:
    """Promoted models, then the synthetic population in the store and the graph."""
    from benchmarks.decide import prepare_models

    task = progress.add_task("training models on a small world", total=None)
    models = prepare_models(settings)
    progress.update(task, description="writing profiles", total=population, completed=0)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    wall, cpu = time.perf_counter(), time.process_time()
    written = pop.write_profiles(
        settings, population, end, advance=lambda n: progress.advance(task, n)
    )
    written["cpu_seconds"] = round(time.process_time() - cpu, 3)
    progress.update(task, description="identity graph", completed=0)
    written["register_seconds"] = pop.register(
        settings, population, lambda n: progress.advance(task, n)
    )
    written["seconds_total"] = round(time.perf_counter() - wall, 3)
    progress.remove_task(task)
    return {"models": models, "population": written}


def bench_batch(
    customers: int = 100_000,
    sizes: Sequence[int] = (),
    batches: Sequence[int] = (1, 100, 1000),
    per_batch: int = 5000,
    http_decisions: int = 5000,
    channel: str = CHANNEL,
) -> dict[str, Any]:
    """The figures above in a fresh home. ``per_batch``: customers decided at each batch
    size (the whole population is decided once more at the largest)."""
    sizes = list(sizes) or [customers]
    top = max(batches)
    with (
        tempfile.TemporaryDirectory(prefix="nextbest-bench-") as tmp,
        Progress(transient=True, console=Console(stderr=True)) as progress,
    ):
        settings = Settings(home=Path(tmp)).ensure_dirs()
        prepared = prepare(settings, max(customers, *sizes), progress)
        ids = pop.customer_ids(0, customers)
        deps = load(settings)
        by_batch: dict[str, Any] = {}
        task = progress.add_task("plan_many", total=len(batches) + 3 + len(sizes))
        for b in batches:
            progress.update(task, description=f"plan_many and floor, batches of {b}")
            by_batch[str(b)] = against_floor(
                deps, ids[: max(b, min(per_batch, customers))], b, channel
            )
            progress.advance(task)
        progress.update(task, description=f"plan_many and floor, all {customers} customers")
        whole = against_floor(deps, ids, top, channel)
        progress.advance(task)
        deps.ledger.engine.dispose()  # the server's turn on the ledger
        progress.update(task, description="POST /decide/batch")
        http_ids = ids[: max(2 * top, min(http_decisions, customers))]
        http = over_http(settings, http_ids, min(top, settings.max_batch_decisions), channel)
        http["ratio_to_floor"] = round(http["decisions_per_s"] / whole["floor"]["reads_per_s"], 4)
        progress.advance(task)
        runs = {}
        for n in sizes:
            progress.update(task, description=f"whole run of {n} customers in its own process")
            runs[str(n)] = whole_run(settings, n, top, channel)
            progress.advance(task)
    rate = whole["decisions_per_s"]
    return {
        "customers": customers,
        "channel": channel,
        **prepared,
        "batches": by_batch,
        "population_run": whole,
        "http": http,
        "runs": runs,
        "goals": {f"in_process>={GOAL_PER_S}/s": rate >= GOAL_PER_S},
    }


def batch_tables(result: dict[str, Any]) -> list[Table]:
    """Rates (decisions/s, the floor's reads/s, their ratio, CPU per decision, run time and
    peak RSS of whole runs), then microseconds per decision in each stage."""
    met = ", ".join(f"{goal} {'yes' if ok else 'NO'}" for goal, ok in result["goals"].items())
    rates = Table(title=f"bench batch: {result['customers']} customers; {met}")
    for col in ("run", "decisions", "dec/s", "floor/s", "ratio", "CPU us", "run s", "RSS MiB"):
        rates.add_column(col, justify="right")
    stages = Table(title="microseconds per decision, by stage")
    for col in ("run", *STAGES):
        stages.add_column(col, justify="right")
    runs = {f"batches of {b}": f for b, f in result["batches"].items()}
    runs["whole population"] = result["population_run"]
    runs[f"/decide/batch of {result['http']['batch']}"] = result["http"]
    runs.update({f"own process, {n}": f for n, f in result["runs"].items()})
    for name, f in runs.items():
        floor, ratio = f.get("floor", {}).get("reads_per_s"), f.get("ratio_to_floor")
        rates.add_row(name, str(f["decisions"]), f"{f['decisions_per_s']:,.0f}",
                      "-" if floor is None else f"{floor:,.0f}",
                      "-" if ratio is None else f"{ratio:.3f}",
                      str(f.get("cpu_us_per_decision", "-")), str(f.get("run_seconds", "-")),
                      str(f.get("peak_rss_mib", "-")))  # fmt: skip
        if "stages_us_per_decision" in f:
            stages.add_row(name, *(f"{f['stages_us_per_decision'][s]:,.0f}" for s in STAGES))
    return [rates, stages]


def main(argv: list[str] | None = None) -> None:
    """One whole run in this process (``whole_run``): one JSON line with its figures."""
    args = argparse.ArgumentParser()
    args.add_argument("--home", type=Path, required=True)
    args.add_argument("--customers", type=int, required=True)
    args.add_argument("--size", type=int, required=True)
    args.add_argument("--channel", default=CHANNEL)
    a = args.parse_args(argv)
    t0 = time.perf_counter()
    deps = load(Settings(home=a.home))
    started = time.perf_counter() - t0
    figures = planned(deps, pop.customer_ids(0, a.customers), a.size, a.channel)
    seconds = time.perf_counter() - t0 - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"customers": a.customers, "startup_seconds": round(started, 3),
                      "run_seconds": round(seconds, 3), "peak_rss_mib": round(peak_kib / 1024, 1),
                      **figures}))  # fmt: skip


if __name__ == "__main__":
    main()
