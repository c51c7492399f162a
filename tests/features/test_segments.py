"""Segments: RFM names and scores, cluster names, and stable cluster ids across refreshes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.segments import (
    NO_PURCHASE,
    build_segments,
    centroid_names,
    cluster_features,
    describe,
    fit_clusters,
    load_state,
    match_clusters,
    rfm,
    rfm_name,
)
from nextbest.settings import Settings

AS_OF = pd.Timestamp("2026-03-01", tz="UTC")


@pytest.mark.parametrize(
    ("r", "fm", "name"),
    [(5, 5, "champions"), (4, 1, "new customers"), (3, 4.5, "loyal"), (3, 1, "promising"),
     (2, 4, "at risk"), (2, 1, "hibernating"), (1, 5, "cannot lose them"), (1, 1, "lost"),
     (4, 3, "potential loyalists"), (2, 3, "about to sleep")],
)  # fmt: skip
def test_rfm_names(r: int, fm: float, name: str) -> None:
    assert rfm_name(r, fm) == name


def test_rfm_scores_buyers_by_quintile_and_names_non_buyers() -> None:
    day = pd.Timedelta(days=1)
    rows = [("c0", AS_OF - 400 * day, 10.0)]  # older than the 365 days of F and M
    for i in range(1, 11):  # c1 bought most recently, most often and most
        rows += [(f"c{i}", AS_OF - (i * 10) * day, 100.0 / i)] * (11 - i)
    rows.append(("c1", AS_OF + day, 999.0))  # after as_of: never read
    purchases = pd.DataFrame(rows, columns=["customer_id", "ts", "value"])
    customers = pd.Series([f"c{i}" for i in range(12)])
    out = rfm(purchases, customers, AS_OF).set_index("customer_id")
    assert out.loc["c1", "rfm_score"] == "555" and out.loc["c1", "rfm_segment"] == "champions"
    assert out.loc["c1", "frequency_365d"] == 10 and out.loc["c1", "monetary_365d"] == 1000.0
    assert out.loc["c11", "rfm_segment"] == NO_PURCHASE and out.loc["c11", "rfm_score"] is None
    assert out.loc["c0", "frequency_365d"] == 0 and out.loc["c0", "recency_days"] == 400
    assert out.loc["c0", "rfm_segment"] == "lost"


def _population(seed: int, n: int = 600) -> pd.DataFrame:
    """Four behaviours (web browsers, store goers, big spenders, quiet) with noise."""
    rng = np.random.default_rng(seed)
    features = cluster_features()
    kind = rng.integers(0, 4, n)
    x = pd.DataFrame(rng.gamma(1.0, 0.5, (n, len(features))), columns=features)
    x.loc[kind == 0, "visits_web_30d"] += 25
    x.loc[kind == 1, "visits_store_30d"] += 12
    x.loc[kind == 2, "spend_90d"] += 900
    x.loc[kind == 2, "purchases_90d"] += 6
    x["tenure_days"] += 400
    x["customer_id"] = [f"c{i:04d}" for i in range(n)]
    return x


def test_match_clusters_recovers_a_permutation() -> None:
    old = np.array([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0], [0.0, 10.0]])
    new = old[[2, 0, 3, 1]] + 0.3
    assert match_clusters(old, new).tolist() == [2, 0, 3, 1]
    assert match_clusters(old[:2], new).tolist().count(-1) == 2  # more new than old


def test_clusters_keep_their_ids_and_names_across_refreshes() -> None:
    """A re-run on fresh data (new noise, another KMeans seed, rows in another order) gives a
    customer the same cluster id; without the matching, ids are KMeans' arbitrary order."""
    features = cluster_features()
    first = _population(1)
    state = fit_clusters(first, features, "t1", k=4, seed=0)
    assert sorted(state.names) == sorted(set(state.names))  # unique, readable
    assert "web browsers" in state.names and "store goers" in state.names

    rng = np.random.default_rng(2)
    second = first.copy()
    noisy = features[2:]
    second[noisy] = second[noisy] * rng.uniform(0.9, 1.1, (len(second), len(noisy)))
    second = second.sample(frac=1.0, random_state=3).reset_index(drop=True)
    refreshed = fit_clusters(second, features, "t2", previous=state, k=4, seed=5)
    before = dict(zip(first["customer_id"], np.array(state.ids)[state.assign(first)], strict=True))
    after = np.array(refreshed.ids)[refreshed.assign(second)]
    same = np.mean([before[c] == a for c, a in zip(second["customer_id"], after, strict=True)])
    assert same >= 0.97
    assert dict(zip(refreshed.ids, refreshed.names, strict=True)) == dict(
        zip(state.ids, state.names, strict=True)
    )
    # the matching is what keeps them: a fit without it numbers clusters as KMeans found them
    for seed in range(6, 30):
        fresh = fit_clusters(second, features, "t2", k=4, seed=seed)
        raw = np.array(fresh.ids)[fresh.assign(second)]
        if np.mean([before[c] == a for c, a in zip(second["customer_id"], raw, strict=True)]) < 0.5:
            break
    else:
        pytest.fail("every unmatched re-fit happened to keep the ids: the test shows nothing")


def test_names_fall_back_to_quiet_and_mainstream() -> None:
    names = centroid_names(np.array([[-1.0, -0.8], [0.1, 0.2], [0.1, 0.2]]), ["arpu", "x"])
    assert names == ["quiet", "mainstream", "mainstream 3"]


def test_build_writes_the_view_and_describe_reads_it(tmp_path) -> None:  # noqa: ANN001
    settings = Settings(home=tmp_path)
    pop = _population(4, 200).assign(event_timestamp=AS_OF)
    older = pop.assign(event_timestamp=AS_OF - pd.Timedelta(days=7))
    day = pd.Timedelta(days=1)
    purchases = pd.DataFrame(
        {"customer_id": pop["customer_id"][:50], "ts": AS_OF - 3 * day, "value": 20.0}
    )
    out = build_segments(settings, pd.concat([older, pop]), purchases)
    assert len(out) == 200 and (out["event_timestamp"] == AS_OF).all()
    assert set(out.columns) >= {"rfm_segment", "cluster", "cluster_id", "preferred_channel"}
    assert load_state(settings) is not None
    (settings.feature_dir / "snapshots").mkdir(exist_ok=True)
    pop.to_parquet(settings.feature_dir / "snapshots" / "customer_features.parquet")
    summary = describe(settings)
    assert sum(r["size"] for r in summary["clusters"]) == 200
    assert sum(r["share"] for r in summary["rfm"]) == pytest.approx(1.0, abs=1e-3)
    no_buy = next(r for r in summary["rfm"] if r["segment"] == NO_PURCHASE)
    assert no_buy["size"] == 150 and no_buy["mean"]["frequency_365d"] == 0


def test_a_refresh_on_unchanged_data_moves_nobody() -> None:
    """KMeans' local optimum depends on its seed; a refresh starts from the previous centroids,
    so re-running on the same customers keeps every label (5 seeds)."""
    features = cluster_features()
    pop = _population(7)
    state = fit_clusters(pop, features, "t1", k=5, seed=0)
    labels = np.array(state.ids)[state.assign(pop)]
    for seed in range(1, 6):
        again = fit_clusters(pop, features, "t1", previous=state, k=5, seed=seed)
        assert (np.array(again.ids)[again.assign(pop)] == labels).all()
