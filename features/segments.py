"""Customer segments ("customer DNA"): RFM segments with their usual names and behavioural
clusters named from their centroids, as of the latest snapshot, into
``snapshots/customer_segments.parquet`` (the ``customer_segments`` Feast view).

RFM: recency (days since the last purchase before T), frequency and money (purchases and
spend in the 365 days before T) from the event log; each scored 1-5 by quintile among buyers,
the segment read off R and the mean of F and M. Clusters: KMeans on the ``segments_v1``
FeatureService's features (signed log1p, standardised). A refresh matches the new clusters to
the previous ones (Hungarian assignment on centroid distances, in the previous scaling), so a
customer keeps their cluster's id and name unless their behaviour moved them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from features.repo.data_sources import SEGMENTS_PATH
from nextbest.settings import Settings

STATE_PATH = "segments/clusters.json"
SERVICE = "segments_v1"
CLUSTERS = 5
RFM_DAYS = 365
NO_PURCHASE = "no purchase yet"
# what a centroid high in one feature says about its customers
PHRASES = {
    "arpu": "premium plans",
    "tenure_days": "long-standing",
    "purchases_90d": "frequent buyers",
    "spend_90d": "big spenders",
    "visits_web_30d": "web browsers",
    "visits_app_30d": "app users",
    "visits_store_30d": "store goers",
    "visits_call_centre_30d": "callers",
    "email_open_rate_90d": "e-mail readers",
    "complaints_90d": "complainers",
    "usage_last_month": "heavy users",
    "usage_trend": "rising usage",
}
STRONG = 0.5  # z-score of a centroid's feature that names it
WARM_SLACK = 0.02  # a refresh keeps the warm-started partition unless a fresh one fits 2% better


def rfm_name(r: int, fm: float) -> str:
    """The usual RFM segment of a recency score and a frequency-money score (both 1-5)."""
    if r >= 4:
        if fm >= 4:
            return "champions"
        return "potential loyalists" if fm >= 2 else "new customers"
    if r == 3:
        if fm >= 4:
            return "loyal"
        return "need attention" if fm >= 2 else "promising"
    if r == 2:
        if fm >= 4:
            return "at risk"
        return "about to sleep" if fm >= 2 else "hibernating"
    if fm >= 4:
        return "cannot lose them"
    return "hibernating" if fm >= 2 else "lost"


def _quintile(x: pd.Series, higher_is_better: bool = True) -> pd.Series:
    """Scores 1-5 by rank (ties share the average rank)."""
    pct = x.rank(method="average", pct=True, ascending=higher_is_better)
    return np.ceil(pct * 5).clip(1, 5).astype("int64")


def rfm(purchases: pd.DataFrame, customers: pd.Series, as_of: pd.Timestamp) -> pd.DataFrame:
    """RFM per customer as of ``as_of`` from purchase events (customer_id, ts, value) before it:
    recency_days, frequency_365d, monetary_365d, rfm_score ("RFM" digits) and rfm_segment."""
    p = purchases.loc[(purchases["ts"] < as_of) & purchases["customer_id"].isin(customers)]
    last = p.groupby("customer_id")["ts"].max()
    year = p.loc[p["ts"] >= as_of - pd.Timedelta(days=RFM_DAYS)]
    out = pd.DataFrame(index=pd.Index(customers.unique(), name="customer_id"))
    out["recency_days"] = (as_of - last).dt.total_seconds() / 86400.0
    out["frequency_365d"] = year.groupby("customer_id").size()
    out["monetary_365d"] = year.groupby("customer_id")["value"].sum()
    out[["frequency_365d", "monetary_365d"]] = out[["frequency_365d", "monetary_365d"]].fillna(0)
    out["frequency_365d"] = out["frequency_365d"].astype("int64")
    buyers = out["recency_days"].notna()
    b = out.loc[buyers]
    r = _quintile(b["recency_days"], higher_is_better=False)
    f, m = _quintile(b["frequency_365d"]), _quintile(b["monetary_365d"])
    out["rfm_score"] = None
    out["rfm_segment"] = NO_PURCHASE
    out.loc[buyers, "rfm_score"] = r.astype(str) + f.astype(str) + m.astype(str)
    out.loc[buyers, "rfm_segment"] = [
        rfm_name(int(ri), (fi + mi) / 2) for ri, fi, mi in zip(r, f, m, strict=True)
    ]
    return out.reset_index()


class ClusterState(BaseModel):
    """A fitted clustering: the scaling, the centroids (scaled) and their stable ids/names."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    centroids: list[list[float]]
    ids: list[int]
    names: list[str]
    as_of: str

    def scaled(self, frame: pd.DataFrame) -> np.ndarray:
        return (_signed_log(frame[self.features]) - np.array(self.mean)) / np.array(self.scale)

    def assign(self, frame: pd.DataFrame) -> np.ndarray:
        """Index (into ids/names) of the nearest centroid of each row."""
        x = self.scaled(frame)
        d = ((x[:, None, :] - np.array(self.centroids)[None, :, :]) ** 2).sum(axis=2)
        return d.argmin(axis=1)


def _signed_log(frame: pd.DataFrame) -> np.ndarray:
    """sign(x)·log1p(|x|): counts and money are heavy-tailed; NaN (no trend) is 0."""
    x = frame.astype("float64").fillna(0.0).to_numpy()
    return np.sign(x) * np.log1p(np.abs(x))


def centroid_names(centroids: np.ndarray, features: list[str]) -> list[str]:
    """A readable, unique name per centroid from its strongest features (z-scores)."""
    names: list[str] = []
    for c in centroids:
        order = np.argsort(-c)
        strong = [PHRASES.get(features[i], features[i]) for i in order if c[i] >= STRONG]
        if strong:
            name = strong[0]
        elif c.mean() < -0.2:
            name = "quiet"
        else:
            name = "mainstream"
        extra = iter(strong[1:])
        while name in names:
            nxt = next(extra, None)
            name = f"{name} & {nxt}" if nxt else f"{name} {len(names) + 1}"
        names.append(name)
    return names


def match_clusters(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """For each new centroid, the index of the old one it continues (Hungarian assignment on
    Euclidean distances), or -1 when there are more new clusters than old."""
    cost = np.sqrt(((new[:, None, :] - old[None, :, :]) ** 2).sum(axis=2))
    rows, cols = linear_sum_assignment(cost)
    out = np.full(len(new), -1)
    out[rows] = cols
    return out


def fit_clusters(
    frame: pd.DataFrame,
    features: list[str],
    as_of: str,
    previous: ClusterState | None = None,
    k: int = CLUSTERS,
    seed: int = 0,
) -> ClusterState:
    """KMeans on the scaled features; with a ``previous`` fit, each new cluster takes the id and
    name of the old cluster it matches (compared in the old scaling), new ones fresh ids."""
    raw = _signed_log(frame[features])
    mean, scale = raw.mean(axis=0), raw.std(axis=0)
    scale[scale == 0] = 1.0
    x = (raw - mean) / scale
    k = min(k, len(np.unique(x, axis=0)))
    # one thread: on a loaded 2-core machine KMeans' OpenMP threads took 12.3 s for 600
    # customers, one thread 0.46 s (thousands of rows need no parallelism)
    with threadpool_limits(1):
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
        same = previous is not None and previous.features == features
        if same and len(previous.centroids) == k:
            # started from the previous centroids (in this scaling): KMeans' local optima
            # differ between seeds, and a partition that did not need to move should not
            old = np.array(previous.centroids) * np.array(previous.scale) + np.array(previous.mean)
            warm = KMeans(n_clusters=k, init=(old - mean) / scale, n_init=1).fit(x)
            if warm.inertia_ <= km.inertia_ * (1 + WARM_SLACK):
                km = warm
    centroids = km.cluster_centers_
    if previous is None or previous.features != features:
        ids = list(range(k))
        names = centroid_names(centroids, features)
    else:
        in_old = (centroids * scale + mean - np.array(previous.mean)) / np.array(previous.scale)
        match = match_clusters(np.array(previous.centroids), in_old)
        fresh = iter(range(max(previous.ids) + 1, 10**6))
        ids = [previous.ids[j] if j >= 0 else next(fresh) for j in match]
        new_names = centroid_names(centroids, features)
        names = [previous.names[j] if j >= 0 else new_names[i] for i, j in enumerate(match)]
    return ClusterState(
        features=features,
        mean=mean.tolist(),
        scale=scale.tolist(),
        centroids=centroids.tolist(),
        ids=ids,
        names=names,
        as_of=as_of,
    )


def load_state(settings: Settings) -> ClusterState | None:
    path = settings.feature_dir / STATE_PATH
    return ClusterState.model_validate_json(path.read_text()) if path.exists() else None


def _save_state(settings: Settings, state: ClusterState) -> Path:
    path = settings.feature_dir / STATE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.model_dump(), indent=1))
    tmp.replace(path)
    return path


def cluster_features() -> list[str]:
    """The cluster inputs: the ``segments_v1`` FeatureService's features (defined once)."""
    from features.repo.feature_services import segments_v1

    return [f.name for p in segments_v1.feature_view_projections for f in p.features]


def build_segments(
    settings: Settings,
    snapshots: pd.DataFrame,
    purchases: pd.DataFrame,
    channels: pd.Series | None = None,
) -> pd.DataFrame:
    """Segments of every customer in the latest snapshot: RFM, the cluster (matched to the
    previous fit), and ``channels`` (customer_id -> preferred channel) when given. Writes the
    view's Parquet file and the cluster state; returns the rows written."""
    as_of = snapshots["event_timestamp"].max()
    latest = snapshots.loc[snapshots["event_timestamp"] == as_of].reset_index(drop=True)
    features = cluster_features()
    state = fit_clusters(latest, features, as_of.isoformat(), load_state(settings))
    which = state.assign(latest)
    out = latest[["customer_id", "event_timestamp"]].copy()
    out["cluster_id"] = np.array(state.ids, dtype="int64")[which]
    out["cluster"] = np.array(state.names, dtype=object)[which]
    ts = pd.to_datetime(purchases["ts"], utc=True)
    bought = purchases.assign(ts=ts)
    out = out.merge(rfm(bought, latest["customer_id"], as_of), on="customer_id", how="left")
    pref = channels if channels is not None else pd.Series(dtype=object)
    out["preferred_channel"] = out["customer_id"].map(pref).astype(object)
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    path = settings.feature_dir / SEGMENTS_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    out.to_parquet(tmp, index=False)
    tmp.replace(path)
    _save_state(settings, state)
    return out


def refresh(settings: Settings, channels: pd.Series | None = None) -> pd.DataFrame:
    """:func:`build_segments` from the home's snapshot file and event log."""
    from features.ingest import read_event_log
    from features.repo.data_sources import SNAPSHOT_PATH

    snap = settings.feature_dir / SNAPSHOT_PATH
    if not snap.exists():
        raise FileNotFoundError(f"{snap} is missing (run `nextbest features build` first)")
    cols = ["customer_id", "event_timestamp", *cluster_features()]
    snapshots = pd.read_parquet(snap, columns=list(dict.fromkeys(cols)))
    purchases = read_event_log(settings, ["purchase"], ["customer_id", "ts", "value"])
    return build_segments(settings, snapshots, purchases, channels)


def read_segments(settings: Settings) -> pd.DataFrame:
    path = settings.feature_dir / SEGMENTS_PATH
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (run `nextbest segments refresh`)")
    return pd.read_parquet(path)


def describe(settings: Settings) -> dict[str, Any]:
    """Size, share and mean profile of each RFM segment and each cluster."""
    from features.repo.data_sources import SNAPSHOT_PATH

    seg = read_segments(settings)
    features = cluster_features()
    snap = pd.read_parquet(
        settings.feature_dir / SNAPSHOT_PATH, columns=["customer_id", "event_timestamp", *features]
    )
    frame = seg.merge(snap, on=["customer_id", "event_timestamp"], how="left")
    profile = [*features, "recency_days", "frequency_365d", "monetary_365d"]
    n = len(frame)

    def table(by: str) -> list[dict[str, Any]]:
        rows = []
        for key, g in frame.groupby(by, dropna=False, sort=True):
            means = g[profile].astype("float64").mean()
            rows.append(
                {
                    "segment": None if pd.isna(key) else key,
                    "size": len(g),
                    "share": round(len(g) / n, 4) if n else 0.0,
                    "mean": {
                        c: None if pd.isna(v) else round(float(v), 3) for c, v in means.items()
                    },
                }
            )
        return sorted(rows, key=lambda r: -r["size"])

    state = load_state(settings)
    return {
        "customers": n,
        "as_of": str(frame["event_timestamp"].max()) if n else None,
        "rfm": table("rfm_segment"),
        "clusters": table("cluster"),
        "cluster_ids": dict(zip(state.names, state.ids, strict=True)) if state else {},
    }
