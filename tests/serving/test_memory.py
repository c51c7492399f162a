"""Nothing a worker keeps in memory grows with traffic without a bound (issue 15, item 12)."""

from __future__ import annotations

import uuid

from starlette.testclient import TestClient

from tests.serving.conftest import ADMIN, CHANNEL


def test_metrics_label_routes_not_raw_paths(client: TestClient) -> None:
    """Before: BentoML labelled its request metrics with the raw path, so every customer id
    read through /profile (and every path a scanner tried) added a histogram series for good:
    about 0.5 KiB of the worker's memory each, and lines in /metrics."""
    ids = [f"mem-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    for cid in ids:
        client.get(f"/profile/{cid}", headers=CHANNEL)
    for n in range(100):  # a scanner's paths
        client.get(f"/no-such-{n}", headers=CHANNEL)
    metrics = client.get("/metrics", headers=ADMIN).text
    assert not [cid for cid in ids if cid in metrics]
    assert 'endpoint="/profile/{customer_id}"' in metrics
    assert "/no-such-99" not in metrics and 'endpoint="other"' in metrics
