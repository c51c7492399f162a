"""``nextbest segments refresh``: re-cluster on the latest snapshot (matched to the previous
clusters), score each customer's preferred channel with the promoted models, write the
``customer_segments`` view's file and load it into the online store."""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from features import segments
from serving import audiences
from serving.channels import preferred_channels
from serving.deps import Deps


def refresh(deps: Deps, materialize: bool = True) -> dict[str, Any]:
    """Segments and preferred channels of every customer; counts, timings, what changed."""
    t0 = time.perf_counter()
    before = None
    with contextlib.suppress(FileNotFoundError):
        before = segments.read_segments(deps.settings).set_index("customer_id")["cluster_id"]
    channels = None
    note = "no propensity model promoted: preferred channels left empty"
    if deps.models is not None and getattr(deps.models, "propensity", None) is not None:
        ids = audiences.all_customers(deps)
        rows = audiences.profiles(deps, ids).reset_index().to_dict("records")
        channels = pd.Series(preferred_channels(deps.models, deps.offers(), rows), index=ids)
        note = "preferred channels from the promoted propensity model"
    out = segments.refresh(deps.settings, channels)
    loaded = None
    if materialize and deps.features is not None:
        store = deps.features.store
        end = datetime.now(UTC) + timedelta(seconds=1)
        end = max(end, out["event_timestamp"].max().to_pydatetime() + timedelta(seconds=1))
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for --json
            store.materialize(end - timedelta(days=3650), end, feature_views=["customer_segments"])
        loaded = len(out)
    kept = None
    if before is not None:
        now = out.set_index("customer_id")["cluster_id"]
        common = now.index.intersection(before.index)
        kept = round(float((now[common] == before[common]).mean()), 4) if len(common) else None
    return {
        "customers": len(out),
        "as_of": str(out["event_timestamp"].max()) if len(out) else None,
        "rfm_segments": out["rfm_segment"].value_counts().to_dict(),
        "clusters": out["cluster"].value_counts().to_dict(),
        "preferred_channel": out["preferred_channel"].fillna("none").value_counts().to_dict(),
        "same_cluster_as_before": kept,
        "online_rows": loaded,
        "note": note,
        "seconds": round(time.perf_counter() - t0, 2),
    }
