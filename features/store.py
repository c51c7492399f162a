"""The Feast store, configured from settings (no ``feature_store.yaml``, no cwd-relative paths).

Every path lives under ``settings.feature_dir``: the registry, the SQLite online store, and the
snapshot Parquet files (the repo's FileSources use relative paths resolved against
``repo_path``, which is set to that folder). ``settings.online_store = "redis"`` swaps the
online store for Redis at ``settings.redis_url``. The offline store is Feast's file (Dask)
store: the DuckDB one needs ``ibis-framework`` (the ``feast[duckdb]`` extra), which would be
one more dependency for no gain at this size.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pa_compute
import pyarrow.parquet as pq

from nextbest.settings import Settings, get_settings

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

    from features.online_read import ReadPlan

PROJECT = "nextbest"


def repo_config(settings: Settings):  # noqa: ANN201 - feast import kept lazy
    """The RepoConfig for these settings: local provider, file offline store, SQLite or Redis."""
    from feast import RepoConfig
    from feast.infra.offline_stores.dask import DaskOfflineStoreConfig
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.repo_config import RegistryConfig

    feature_dir = settings.feature_dir
    feature_dir.mkdir(parents=True, exist_ok=True)
    if settings.online_store == "redis":
        online = RedisOnlineStoreConfig(connection_string=redis_connection(settings))
    else:
        online = SqliteOnlineStoreConfig(path=str(feature_dir / "online.db"))
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=RegistryConfig(path=str(feature_dir / "registry.db"), cache_ttl_seconds=60),
        online_store=online,
        offline_store=DaskOfflineStoreConfig(type="file"),
        repo_path=feature_dir,
        entity_key_serialization_version=3,
    )


REDIS_TIMEOUTS = ("socket_timeout", "socket_connect_timeout")


def redis_connection(settings: Settings) -> str:
    """``settings.redis_url`` with socket connect and read timeouts of
    ``feature_timeout_ms`` (Feast passes ``key=value`` parts of its connection string to
    ``redis.Redis``), unless the URL sets its own. redis-py's default is 5 s each, retried 10
    times: a hung Redis held every read for about a minute."""
    url = settings.redis_url
    given = {part.split("=", 1)[0].strip() for part in url.split(",") if "=" in part}
    seconds = settings.feature_timeout_ms / 1000
    extra = [f"{key}={seconds:g}" for key in REDIS_TIMEOUTS if key not in given]
    return ",".join([url, *extra])


def get_store(settings: Settings | None = None) -> FeatureStore:
    """A FeatureStore for these settings (default: the process settings)."""
    from feast import FeatureStore

    settings = settings or get_settings()
    store = FeatureStore(repo_path=str(settings.feature_dir), config=repo_config(settings))
    if settings.online_store == "sqlite":
        _tune_sqlite(store)
    else:
        _no_redis_retries(store)
    return store


def _no_redis_retries(store: FeatureStore) -> None:
    """A failed Redis call fails at once: redis-py retries a connection error or a timeout 10
    times with backoff by default (about a second against a refusing Redis, ten timeouts
    against a hung one). The caller's circuit breaker decides when to try again. Uses Feast's
    private ``_get_client`` (it builds the client without connecting): skipped if it moves."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    get_client = getattr(store.provider.online_store, "_get_client", None)
    if get_client is None:
        return
    get_client(store.config.online_store).set_retry(Retry(NoBackoff(), 0))


def _tune_sqlite(store: FeatureStore) -> None:
    """WAL for Feast's SQLite online store: readers (service workers) no longer wait for a
    writer, and a push no longer fsyncs (5-25 ms on a busy disk). The online store is a cache,
    rebuilt from the event log and snapshots, so synchronous=NORMAL is enough; the event log
    itself keeps synchronous=FULL. Uses Feast's private ``_get_conn``: skipped if it moves."""
    online = store.provider.online_store
    get_conn = getattr(online, "_get_conn", None)
    if get_conn is None:
        return
    conn = get_conn(store.config)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    # an update leaves the old value's cell (the entity key spells the customer id) in freed
    # space; zeroed, an erased customer's rows leave no bytes behind (features.erase)
    conn.execute("PRAGMA secure_delete=ON")


def repo_objects() -> list[Any]:
    """Every Feast object of ``features/repo``, in the order ``apply`` wants them."""
    from features.repo import data_sources as ds
    from features.repo import entities, feature_services
    from features.repo import feature_views as fv

    return [
        entities.customer,
        ds.customer_snapshots,
        ds.customer_realtime_batch,
        ds.customer_realtime_push,
        ds.customer_segments_source,
        ds.customer_value_snapshots,
        ds.decision_time,
        fv.customer_profile,
        fv.customer_consent,
        fv.customer_activity,
        fv.customer_realtime,
        fv.customer_value,
        fv.customer_basket_live,
        fv.customer_segments,
        *feature_services.ALL_SERVICES,
    ]


def apply_repo(store: FeatureStore) -> dict[str, Any]:
    """Register the repo's objects (idempotent, like ``feast apply``)."""
    objects = repo_objects()
    with warnings.catch_warnings():  # "on demand feature view is experimental", once per apply
        warnings.simplefilter("ignore", RuntimeWarning)
        store.apply(objects)
    return {
        "project": store.project,
        "registry": str(store.config.registry.path),
        "objects": [o.name for o in objects],
    }


def online_batch_views(store: FeatureStore) -> list[Any]:
    """Every online view fed from a batch source: what the online store holds a row of."""
    return [v for v in store.list_feature_views() if v.online and v.batch_source is not None]


def materialized_views(store: FeatureStore) -> list[Any]:
    """Online views with a batch source file to load: a view whose file is not written (the
    segments view of a home built before it, the customer value before `clv train`) is
    skipped, not an error."""
    views = online_batch_views(store)
    return [v for v in views if (store.config.repo_path / v.batch_source.path).exists()]


def _latest(store: FeatureStore, view: Any) -> datetime:
    """Just after the newest row of a view's source (a simulated world may lie in the future)."""
    path = store.config.repo_path / view.batch_source.path
    if not path.exists():
        return datetime.min.replace(tzinfo=UTC)
    column = pq.read_table(path, columns=[view.batch_source.timestamp_field]).column(0)
    return pa_compute.max(column).as_py() + timedelta(seconds=1)


def _count_entities(store: FeatureStore, view: Any) -> int:
    """Rows a materialisation writes: one per customer present in the view's source file."""
    path = store.config.repo_path / view.batch_source.path
    if not path.exists():
        return 0
    table = pq.read_table(path, columns=["customer_id"])
    return len(table.column("customer_id").unique())


def materialize(
    store: FeatureStore, end: datetime | None = None, start: datetime | None = None
) -> dict[str, Any]:
    """Load the latest snapshot row per customer of every batch view into the online store,
    one view at a time under a Rich progress bar. Returns rows, seconds and rows/s."""
    from rich.progress import Progress

    views = materialized_views(store)
    end = end or max([datetime.now(UTC), *(_latest(store, v) for v in views)])
    start = start or end - timedelta(days=3650)
    rows, t0 = 0, time.perf_counter()
    with Progress(transient=True) as progress:
        task = progress.add_task("materialise", total=len(views))
        for view in views:
            progress.update(task, description=f"materialise {view.name}")
            with contextlib.redirect_stdout(sys.stderr):  # keep stdout for --json
                store.materialize(start, end, feature_views=[view.name])
            rows += _count_entities(store, view)
            progress.advance(task)
    seconds = time.perf_counter() - t0
    return {
        "views": [v.name for v in views],
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1) if seconds else None,
        "end": end.isoformat(),
    }


def _service(store: FeatureStore, name: str) -> tuple[Any, list[str]]:
    """The FeatureService and its feature names in the service's order; cached on the store
    (``get_feature_service`` costs ~2 ms of registry proto parsing)."""
    cache: dict[str, tuple[Any, list[str]]] = store.__dict__.setdefault("_nextbest_services", {})
    if name not in cache:
        fs = store.get_feature_service(name)
        cache[name] = (fs, [f.name for p in fs.feature_view_projections for f in p.features])
    return cache[name]


def feature_names(store: FeatureStore, service: str) -> list[str]:
    """The service's feature names in a stable order (for model inputs)."""
    return list(_service(store, service)[1])


def read_online(
    store: FeatureStore,
    service: str,
    customer_ids: list[str],
    now: datetime | Sequence[datetime] | None = None,
) -> list[dict[str, Any]]:
    """Online features of ``service`` per customer: ``customer_id`` then the features in the
    service's order; unknown customers come back with None values. ``now``: the time the
    on-demand fields count from, one for all or one per entry of ``customer_ids`` (a replay's
    visits, each as of its own time); None is the wall clock.

    Reads the stored views (``ReadPlan.stored``) and runs the on-demand views' own transforms
    instead of ``get_online_features`` (~0.9-1.6 ms for one customer). Names, views and
    transforms come from the FeatureService; values come out exactly as Feast's own path
    gives them (a test holds the two equal).
    """
    from features.online_read import request_ts, round_trip

    plan = _read_plan(store, service)
    unique = list(dict.fromkeys(customer_ids))
    values: dict[str, list[Any]] = {plan.join_key: unique, **plan.stored(store, unique)}
    if now is not None and not isinstance(now, datetime):
        if len(now) != len(customer_ids):
            raise ValueError(f"now: {len(now)} times for {len(customer_ids)} customers")
        at = {c: i for i, c in enumerate(unique)}
        rows = [at[c] for c in customer_ids]  # a row per entry: one customer, two times
        values = {k: [v[i] for i in rows] for k, v in values.items()}
        stamps = [request_ts(t.replace(microsecond=0)) for t in now]
        unique = list(customer_ids)
    else:
        stamps = [request_ts((now or datetime.now(UTC)).replace(microsecond=0))] * len(unique)
    if plan.odfvs:
        for name in plan.request_fields:
            values[name] = list(stamps)
        for odfv, wanted in plan.odfvs:
            out = plan.transform(odfv, values)
            for name in wanted:
                values[name] = round_trip(out[name], plan.types[name])
    keys_out = [plan.join_key, *plan.names]
    if len(unique) == len(customer_ids) and unique == customer_ids:
        return [{k: values[k][i] for k in keys_out} for i in range(len(unique))]
    by_id = {c: i for i, c in enumerate(unique)}
    return [{k: values[k][by_id[c]] for k in keys_out} for c in customer_ids]


def _read_plan(store: FeatureStore, service: str) -> ReadPlan:
    """The service's read plan, cached on the store like ``_service``."""
    from features.online_read import ReadPlan

    cache: dict[str, ReadPlan] = store.__dict__.setdefault("_nextbest_plans", {})
    if service not in cache:
        cache[service] = ReadPlan(store, *_service(store, service))
    return cache[service]


def historical_features(store: FeatureStore, service: str, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of ``service`` for ``entity_df`` (``customer_id``,
    ``event_timestamp``): the training side of the same service. Adds ``request_ts`` (the row's
    own time) so the request-time basket fields are computed as of that row.

    Feast's file offline store drops an entity row when a view holds rows for that customer
    only after the row's time; merging back onto ``entity_df`` keeps every row (features NaN).
    """
    keys = ["customer_id", "event_timestamp"]
    frame = entity_df[keys].drop_duplicates().copy()
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
    frame["request_ts"] = frame["event_timestamp"]
    fs = _service(store, service)[0]
    out = store.get_historical_features(entity_df=frame, features=fs).to_df()
    out = out.drop(columns=["request_ts"])
    out["event_timestamp"] = out["event_timestamp"].astype("datetime64[us, UTC]")
    left = entity_df.copy()
    left["event_timestamp"] = left["event_timestamp"].astype("datetime64[us, UTC]")
    return left.merge(out, on=keys, how="left")


BASKET_FIELDS = (
    "basket_items",
    "basket_value",
    "basket_updated_at",
    "basket_minutes_since_change",
    "basket_abandoned",
)


def _identifier_counts(graph: Any, customer_id: str) -> dict[str, int]:
    """How many hashed identifiers of each kind the graph links to this customer."""
    from sqlalchemy import text

    with graph.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT key_type, count(*) FROM identity_keys WHERE customer_id = :c "
                "GROUP BY key_type ORDER BY key_type"
            ),
            {"c": customer_id},
        ).all()
    return {kind: int(n) for kind, n in rows}


def unified_profile(
    settings: Settings, customer_id: str, store: FeatureStore | None = None
) -> dict[str, Any]:
    """One customer's profile: ``profile_v2`` online features (``profile_v1`` and the customer's
    value), the live basket on its own, and the identifiers behind the id. A merged-away id is
    followed to the surviving customer."""
    from features.identity import Identifiers, graph_for

    graph = graph_for(settings)
    current = graph.lookup(Identifiers(customer_id=customer_id))
    store = store or get_store(settings)
    row = read_online(store, "profile_v2", [current or customer_id])[0]
    skip = {"customer_id", "basket_abandoned"}  # abandoned is False even for nobody
    known = {k: v for k, v in row.items() if k not in skip and v is not None}
    if current is None and not known:
        raise LookupError(f"customer_id {customer_id!r} is not known to the identity graph")
    identifiers = _identifier_counts(graph, current) if current else {}
    return {
        "customer_id": current or customer_id,
        "identifiers": identifiers,
        "identifiers_total": sum(identifiers.values()),
        "basket": {k: row.get(k) for k in BASKET_FIELDS},
        "features": {k: v for k, v in row.items() if k not in BASKET_FIELDS and k != "customer_id"},
    }
