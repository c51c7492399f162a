"""One measured identity-resolution run, alone in its process so its peak memory is its own.

``python -m benchmarks.identity_worker ENGINE CSV OUT REGION`` prints one JSON line: wall
and CPU seconds (all threads) and peak resident memory (``VmHWM``; includes the interpreter,
~0.15 GB). Engines: ``floor`` (read and normalise only), ``ours`` (the bounded-memory batch
engine), ``splink``.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from nextbest.settings import get_settings

ENGINES = ("floor", "ours", "splink")


def _floor(csv: Path, region: str) -> dict[str, float]:
    """What every engine pays anyway: read the CSV in chunks and normalise each record."""
    from features.identity_batch import read_chunks
    from features.identity_chunks import normalise_chunk

    n = 0
    for chunk in read_chunks(csv, 100_000):
        n += len(normalise_chunk(chunk, region)[0])
    return {"records": n}


def _ours(csv: Path, out: Path, region: str, workdir: Path) -> dict[str, float]:
    from features.identity_batch import resolve_csv

    s = get_settings()
    summary = resolve_csv(
        csv,
        out,
        region=region,
        max_size=s.identity_max_cluster,
        max_names=s.identity_max_names,
        memory_limit=s.identity_batch_memory,
        workdir=workdir,
    )
    return {"records": summary.records, "largest_block": summary.largest_block}


def _splink(csv: Path, out: Path, region: str, workdir: Path) -> dict[str, float]:
    from benchmarks.identity_splink import THRESHOLDS, resolve

    by_threshold = resolve(csv, region, workdir, THRESHOLDS)
    frame = pd.DataFrame({"record_id": by_threshold[THRESHOLDS[0]]["record_id"]})
    for threshold, resolved in by_threshold.items():
        frame[str(threshold)] = resolved["customer_id"].to_numpy()
    frame.to_parquet(out)
    return {"records": len(frame)}


def peak_gb() -> float:
    """Peak resident memory of this process image: ``VmHWM``. Not ``ru_maxrss``, which Linux
    carries over fork and exec, so a worker would report its parent's size at fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main(engine: str, csv: Path, out: Path, region: str) -> dict[str, float]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        if engine == "floor":
            extra = _floor(csv, region)
        elif engine == "ours":
            extra = _ours(csv, out, region, Path(tmp))
        else:
            extra = _splink(csv, out, region, Path(tmp))
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "engine": engine,
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_gb": peak_gb(),
        **extra,
    }


if __name__ == "__main__":
    engine, csv, out, region = sys.argv[1:5]
    if engine not in ENGINES:
        raise SystemExit(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    print(json.dumps(main(engine, Path(csv), Path(out), region)))
