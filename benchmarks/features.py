"""Feature-store figures: event-to-online freshness, materialisation rows/s, and a floor.

Runs in a throw-away home so it never touches the user's store. Two freshness figures:
``push_then_read`` (the store alone: write a real-time row, read it back through ``offer_v1``)
and ``freshness`` (an event handed to ``ingest_event``: identity link, durable event-log
append, read-modify-push of the real-time row, until an ``offer_v1`` read shows the new
basket). The floor is a raw single-view online read in the same run, so ratios survive noise.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nextbest.settings import Settings


def _ms(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples) * 1000.0
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
    }


def _synthetic_snapshots(settings: Settings, customers: int, end: datetime) -> None:
    """Snapshot files with every column the views declare (names read from the views)."""
    from feast.types import Bool, Float64, Int64, String, UnixTimestamp

    from features.repo.data_sources import REALTIME_PATH, SNAPSHOT_PATH
    from features.repo.feature_views import (
        customer_activity,
        customer_consent,
        customer_profile,
        customer_realtime,
    )

    rng = np.random.default_rng(7)
    ids = [f"bench{i:06d}" for i in range(customers)]
    stamp = pd.Series([end] * customers).astype("datetime64[us, UTC]")

    def column(dtype: Any) -> Any:
        if dtype == Int64:
            return rng.integers(0, 20, customers)
        if dtype == Float64:
            return rng.gamma(2.0, 10.0, customers)
        if dtype == Bool:
            return rng.random(customers) < 0.8
        if dtype == String:
            return rng.choice(["prepaid", "postpaid_s", "postpaid_m", "web", "app"], customers)
        if dtype == UnixTimestamp:
            return stamp - pd.to_timedelta(rng.integers(1, 10_000, customers), unit="min")
        raise TypeError(dtype)

    for views, rel in (
        ((customer_profile, customer_consent, customer_activity), SNAPSHOT_PATH),
        ((customer_realtime,), REALTIME_PATH),
    ):
        frame = pd.DataFrame({"customer_id": ids, "event_timestamp": stamp})
        for view in views:
            for field in view.features:  # not .schema: Feast adds the entity column to it
                frame[field.name] = column(field.dtype)
        path = settings.feature_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)


def run(events: int = 300, customers: int = 2000, home: Path | None = None) -> dict[str, Any]:
    """Materialise ``customers`` rows per view, then ingest ``events`` basket adds and time
    each one until it is visible online. Returns the figures as one dict."""
    from features.identity import graph_for
    from features.ingest import ingest_event, push_realtime
    from features.store import apply_repo, get_store, materialize, read_online

    with tempfile.TemporaryDirectory(prefix="nextbest-bench-") as tmp:
        settings = Settings(home=home or Path(tmp)).ensure_dirs()
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        _synthetic_snapshots(settings, customers, end)
        store = get_store(settings)
        apply_repo(store)
        mat = materialize(store, end=end + timedelta(seconds=1), start=end - timedelta(days=1))
        graph = graph_for(settings)

        raw_refs = ["customer_realtime:basket_items"]
        floor: list[float] = []
        for i in range(events):
            row = [{"customer_id": f"bench{i % customers:06d}"}]
            t0 = time.perf_counter()
            store.get_online_features(features=raw_refs, entity_rows=row).to_dict()
            floor.append(time.perf_counter() - t0)

        push_read: list[float] = []  # the store alone: push a row, read it back
        for i in range(events):
            cid = f"bench{i % customers:06d}"
            row = {
                "basket_items": i + 1,
                "basket_value": 1.0,
                "basket_updated_at": end,
                "last_visit_at": end,
                "last_channel": "web",
            }
            t0 = time.perf_counter()
            push_realtime(store, cid, row, datetime.now(UTC))
            got = read_online(store, "offer_v1", [cid])[0]["basket_items"]
            push_read.append(time.perf_counter() - t0)
            if got != i + 1:
                raise RuntimeError(f"pushed basket_items={i + 1} but read {got}")

        fresh, ingest, reads = [], [], []
        pool = [f"fresh{i}@bench.example" for i in range(max(events // 6, 1))]
        for i in range(events):
            email = pool[i % len(pool)]
            event = {
                "ts": datetime.now(UTC).isoformat(),
                "channel": "web",
                "event_type": "basket_add",
                "email": email,
                "product_id": "data_addon",
                "value": 5.0,
                "quantity": 1,
            }
            t0 = time.perf_counter()
            result = ingest_event(event, store=store, graph=graph, settings=settings)
            t1 = time.perf_counter()
            want = result["realtime"]["basket_items"]
            seen = read_online(store, "offer_v1", [result["customer_id"]])[0]
            t2 = time.perf_counter()
            if seen["basket_items"] != want:
                raise RuntimeError(f"pushed basket_items={want} but read {seen['basket_items']}")
            fresh.append(t2 - t0)
            ingest.append(t1 - t0)
            reads.append(t2 - t1)
        floor_p50 = float(np.median(floor))
        return {
            "events": events,
            "customers_materialised": customers,
            "materialize_rows": mat["rows"],
            "materialize_rows_per_s": mat["rows_per_s"],
            "push_then_read_ms": _ms(push_read),
            "freshness_ms": _ms(fresh),
            "ingest_ms": _ms(ingest),
            "online_read_offer_v1_ms": _ms(reads),
            "floor_raw_online_read_ms": _ms(floor),
            "push_then_read_over_floor": round(float(np.median(push_read)) / floor_p50, 1),
            "freshness_over_floor": round(float(np.median(fresh)) / floor_p50, 1),
            "offer_read_over_floor": round(float(np.median(reads)) / floor_p50, 1),
            "online_store": settings.online_store,
        }


if __name__ == "__main__":
    import json

    print(json.dumps(run()))
