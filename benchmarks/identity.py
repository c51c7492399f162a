"""Batch identity resolution at scale: ours against a floor, and against Splink.

Each run is a subprocess (``benchmarks.identity_worker``) so its peak memory is its own. The
floor reads and normalises the same records without linking; our figures are also given as
a ratio of its time. Quality is pairwise precision/recall/F1 against the generator's truth
(``features.identity_eval.pair_counts``). Splink is reported at the usual threshold (0.9)
and at the threshold of its best F1, chosen against truth (which flatters it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from features.identity_eval import pair_counts
from features.identity_messy import messy_records

SIZES = (10_000, 100_000, 1_000_000)
SPLINK_SIZES = (10_000, 129_000, 515_000)  # the record sets of issue 16's table


def run_worker(engine: str, csv: Path, out: Path, region: str) -> dict[str, Any]:
    """One engine on one file in a fresh process; its JSON line."""
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "benchmarks.identity_worker", engine, str(csv), str(out), region]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise RuntimeError(f"{engine} on {csv.name} failed: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _quality(resolved: pd.DataFrame, truth: pd.DataFrame, column: str) -> dict[str, float]:
    merged = truth.merge(resolved, on="record_id", how="left", validate="1:1")
    scores = pair_counts(merged[column].astype(str), merged["true_person_id"])
    return {k: round(scores[k], 4) for k in ("precision", "recall", "f1")}


def _row(n: int, measured: dict[str, Any], floor: dict[str, Any] | None) -> dict[str, Any]:
    row = {
        "records": n,
        "engine": measured["engine"],
        "seconds": round(measured["seconds"], 2),
        "cpu_seconds": round(measured["cpu_seconds"], 2),
        "records_per_s": round(n / measured["seconds"]),
        "peak_gb": round(measured["peak_gb"], 3),
    }
    if floor is not None:
        row["time_vs_floor"] = round(measured["seconds"] / floor["seconds"], 2)
    return row


def measure(
    csv: Path, region: str, engines: tuple[str, ...], workdir: Path
) -> list[dict[str, Any]]:
    """Rows (one per engine, two for Splink) on one record file."""
    header = pd.read_csv(csv, nrows=0).columns
    truth = None
    if "true_person_id" in header:
        truth = pd.read_csv(csv, dtype=str, usecols=["record_id", "true_person_id"])
    floor = run_worker("floor", csv, workdir / "floor.out", region)
    n = int(floor["records"])
    rows = [_row(n, floor, None)]
    for engine in engines:
        out = workdir / f"{engine}.parquet"
        measured = run_worker(engine, csv, out, region)
        resolved = pd.read_parquet(out)
        if engine == "ours":
            quality = _quality(resolved, truth, "customer_id") if truth is not None else {}
            rows.append(_row(n, measured, floor) | quality)
            continue
        from benchmarks.identity_splink import DEFAULT_THRESHOLD

        chosen = [str(DEFAULT_THRESHOLD)]
        if truth is not None:
            sweep = {c: _quality(resolved, truth, c) for c in resolved.columns if c != "record_id"}
            best = max(sweep, key=lambda c: sweep[c]["f1"])
            chosen += [best] if best != chosen[0] else []
        for column in chosen:
            quality = _quality(resolved, truth, column) if truth is not None else {}
            rows.append(_row(n, measured, floor) | {"threshold": float(column)} | quality)
    return rows


def run(
    sizes: tuple[int, ...] = SIZES,
    splink_sizes: tuple[int, ...] = (),
    *,
    region: str = "DE",
    seed: int = 0,
    csv: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generated record sets of each size (or one given ``csv``); ours everywhere, Splink at
    ``splink_sizes``. Timings are wall clock on whatever load the machine carries."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if csv is not None:
            plan = [(csv, ("ours", "splink") if splink_sizes else ("ours",))]
        else:
            plan = []
            for n in sorted(set(sizes) | set(splink_sizes)):
                engines = ("ours",) * (n in sizes) + ("splink",) * (n in splink_sizes)
                plan.append((work / f"messy_{n}.csv", engines))
        for path, engines in plan:
            if csv is None:
                n = int(path.stem.split("_")[1])
                messy_records(n, seed).to_csv(path, index=False)
            if progress:
                progress(f"{path.name}: {', '.join(('floor', *engines))}")
            rows += measure(path, region, engines, work)
            if csv is None:
                path.unlink()
    return {"region": region, "seed": seed, "cpus": os.cpu_count(), "rows": rows}


def plot(result: dict[str, Any], path: Path) -> Path:
    """Records per second and peak memory against records, one line per engine (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4))
    rows = pd.DataFrame(result["rows"]).drop_duplicates(["records", "engine"])
    for engine, group in rows.groupby("engine"):
        group = group.sort_values("records")
        speed.plot(group["records"], group["records_per_s"], "-o", label=engine)
        memory.plot(group["records"], group["peak_gb"], "-o", label=engine)
    for ax, label in ((speed, "records per second"), (memory, "peak memory (GB)")):
        ax.set_xscale("log")
        ax.set_xlabel("records")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    fig.suptitle("batch identity resolution (wall clock on a loaded 2-core machine)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
