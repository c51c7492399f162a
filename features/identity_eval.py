"""Scoring identity resolution against the simulator's truth, with the figures that explain it.

Pairwise precision/recall/F1 come from the cluster contingency table (no O(n^2) pair lists).
The recall ceilings say how much of the truth is linkable at all: a person's records that
share no identifier and no name with the rest of that person cannot be joined by any resolver.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features import normalize as nz
from features.identity import Identifiers, IdentityGraph
from features.identity_records import KEY_FIELDS, prepare
from features.schema import ID_COLUMNS


def _pairs(counts: pd.Series) -> int:
    c = counts.to_numpy(dtype="int64")
    return int((c * (c - 1) // 2).sum())


def pair_counts(pred: pd.Series, truth: pd.Series) -> dict[str, float]:
    """Pairwise precision, recall and F1 of a clustering against true labels."""
    frame = pd.DataFrame({"p": pred.to_numpy(), "t": truth.to_numpy()})
    tp = _pairs(frame.groupby(["p", "t"]).size())
    pred_pairs, true_pairs = _pairs(frame.groupby("p").size()), _pairs(frame.groupby("t").size())
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positive_pairs": tp,
        "predicted_pairs": pred_pairs,
        "true_pairs": true_pairs,
    }


def recall_ceilings(frame: pd.DataFrame, region: str) -> dict[str, float]:
    """Recall of an oracle that links a person's records whenever they share a canonical
    identifier (``keys``), or an identifier or canonical full name (``keys_and_names``)."""
    records = prepare(frame, region, warnings=[])
    truth = frame["true_person_id"].to_numpy()
    parent = np.arange(len(records))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def link(values: list[object]) -> None:
        first: dict[tuple[object, str], int] = {}
        for i, v in enumerate(values):
            if v is not None:
                j = first.setdefault((v, truth[i]), i)
                parent[find(i)] = find(j)

    out = {}
    for field in KEY_FIELDS:
        link([r.keys.get(field) for r in records])
    out["keys"] = _recall(parent, find, truth)
    link([(nz.canonical_first(r.first), r.last) if r.first and r.last else None for r in records])
    out["keys_and_names"] = _recall(parent, find, truth)
    return out


def _recall(parent: np.ndarray, find: Any, truth: np.ndarray) -> float:
    roots = pd.Series([find(i) for i in range(len(parent))])
    return pair_counts(roots, pd.Series(truth))["recall"]


def evaluate_world(world_dir: Path, salt: str, region: str, **options: Any) -> dict[str, Any]:
    """Resolve a world's identity records on a throw-away SQLite graph (same engine settings as
    the ledger); score against truth; time resolve, real-time lookups and event mapping.
    ``options`` go to ``IdentityGraph`` (max_cluster, max_names, name_only)."""
    from nextbest.db import engine_for

    world_dir = Path(world_dir)
    frame = pd.read_parquet(world_dir / "identities.parquet")
    with tempfile.TemporaryDirectory() as tmp:
        engine = engine_for(f"sqlite:///{tmp}/identity_eval.db")
        graph = IdentityGraph(engine, salt, region, **options)
        start = time.perf_counter()
        resolved = graph.resolve(frame, lenient=True)
        seconds = time.perf_counter() - start
        timing = _timings(graph, frame, world_dir / "events.parquet")
        engine.dispose()
    ceilings = recall_ceilings(frame, region)
    return {
        **pair_counts(resolved["customer_id"], frame["true_person_id"]),
        "recall_ceiling_keys": ceilings["keys"],
        "recall_ceiling_keys_and_names": ceilings["keys_and_names"],
        "records": len(frame),
        "people": int(frame["true_person_id"].nunique()),
        "customers": int(resolved["customer_id"].nunique()),
        **{k: v for k, v in graph.last_stats.items() if k not in ("records", "customers")},
        "resolve_records_per_s": round(len(frame) / seconds),
        **timing,
    }


def _timings(graph: IdentityGraph, frame: pd.DataFrame, events: Path) -> dict[str, float]:
    """Real-time lookup latency (one record's identifiers each) and event mapping rate."""
    sample = frame.sample(min(len(frame), 1000), random_state=0)
    fields = list(ID_COLUMNS)
    calls = [Identifiers(**{f: r[f] for f in fields}) for r in sample[fields].to_dict("records")]
    for ids in calls[:100]:  # warm the pool and the statement cache
        graph.lookup(ids)
    lat = []
    for ids in calls:
        start = time.perf_counter_ns()
        graph.lookup(ids)
        lat.append((time.perf_counter_ns() - start) / 1000)
    out = {
        "lookup_p50_us": float(np.percentile(lat, 50)),
        "lookup_p99_us": float(np.percentile(lat, 99)),
    }
    if events.exists():
        ev = pd.read_parquet(events, columns=fields)
        start = time.perf_counter()
        mapped = graph.map_identifiers(ev)
        out["map_events_per_s"] = round(len(ev) / (time.perf_counter() - start))
        out["events_mapped_share"] = float(mapped.notna().mean())
    return out
