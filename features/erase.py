"""The right to erasure in the feature stores: a person's rows leave the online store (SQLite
or Redis), the offline snapshot files and the event log, and their bytes leave the files.

Uses two private Feast helpers (the online store's connection and client), because Feast has
no delete-by-entity API; ``tests/features/test_store.py`` fails if they move.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow.compute as pa_compute
import pyarrow.parquet as pq

from features.online_read import forget_customer
from features.store import get_store
from nextbest.settings import Settings, get_settings

if TYPE_CHECKING:
    from feast import FeatureStore

    from features.identity import IdentityGraph


def erase_customer(
    store: FeatureStore | None, customer_id: str, settings: Settings | None = None
) -> dict[str, int]:
    """Delete one customer from every feature store: online rows of every view, offline
    snapshot rows and event log rows; returns rows (Redis: keys) deleted per store. Idempotent.
    The event log holds ``customer_id`` only (raw identifiers are never logged), so deleting
    by id erases the person. ``store`` None opens the store of ``settings``; a failure is
    raised (after the files are erased) and a retry finishes the job."""
    settings = settings or get_settings()
    store = store or get_store(settings)
    # files first: a failing online store (Redis down) still leaves them erased
    event_log = _erase_event_log(settings, customer_id)
    offline = sum(_erase_parquet(p, customer_id) for p in _parquet_files(store))
    forget_customer(store, customer_id)
    return {
        "online": _erase_online(store, customer_id),
        "offline": offline,
        "event_log": event_log,
    }


def _erase_online(store: FeatureStore, customer_id: str) -> int:
    """SQLite: the customer's rows in each view's table (one per feature). Redis: the one
    hash holding every view of the entity, keyed as feast's ``_redis_key`` builds it."""
    from feast.infra.online_stores.helpers import compute_table_id

    from features.online_read import entity_key_bytes
    from features.repo.entities import customer

    key = entity_key_bytes(store.config, customer.join_key, customer_id)
    online = store.provider.online_store
    kind = store.config.online_store.type
    if kind == "redis":
        client = online._get_client(store.config.online_store)
        return int(client.delete(key + store.project.encode("utf-8")))
    if kind != "sqlite":
        raise ValueError(f"online_store: erasure is not implemented for {kind!r}")
    versioning = store.config.registry.enable_online_feature_view_versioning
    tables = [
        compute_table_id(store.project, view, versioning)
        for view in store.list_feature_views()
        if view.online
    ]
    conn = online._get_conn(store.config)
    existing = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    sql = 'DELETE FROM "{}" WHERE entity_key = ?'
    statements = [sql.format(t.replace('"', '""')) for t in tables if t in existing]
    return _scrub(conn, statements, (key,))


def _scrub(conn: Any, statements: list[str], params: tuple[Any, ...]) -> int:
    """Run deletes in one transaction with ``secure_delete`` on (freed pages are zeroed, so
    the bytes do not linger in the file) and checkpoint the WAL; rows deleted. The pragma
    stays on: the stores open their connections with it (earlier updates' freed cells are
    zeroed too), and turning it off here would undo that for the connection's later writes."""
    conn.execute("PRAGMA secure_delete=ON")
    with conn:
        n = sum(conn.execute(s, params).rowcount for s in statements)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # best effort: busy readers keep it
    return n


def _parquet_files(store: FeatureStore) -> list[Any]:
    """Every Parquet file under the feature folder (snapshots, the CRM extract)."""
    return sorted(Path(store.config.repo_path).rglob("*.parquet"))


def _erase_parquet(path: Any, customer_id: str) -> int:
    """Rewrite a Parquet file without the customer's rows (atomically); rows removed. Files
    without a ``customer_id`` column are left alone."""
    if "customer_id" not in pq.read_schema(path).names:
        return 0
    table = pq.read_table(path)
    hit = pa_compute.fill_null(pa_compute.equal(table["customer_id"], customer_id), False)
    n = pa_compute.sum(hit).as_py() or 0
    if n:
        tmp = path.with_suffix(".erase.tmp")
        pq.write_table(table.filter(pa_compute.invert(hit)), tmp)
        tmp.replace(path)  # readers see the old file or the new one, never half of one
    return n


def _erase_event_log(settings: Settings, customer_id: str) -> int:
    """The customer's events in both parts of the log: ``batch.parquet`` and ``live.db``."""
    from features.ingest import _live_db, _lock  # the log's one writer connection and lock

    n = 0
    batch = settings.event_log_dir / "batch.parquet"
    if batch.exists():
        n += _erase_parquet(batch, customer_id)
    con = _live_db(settings)
    with _lock:
        n += _scrub(con, ["DELETE FROM events WHERE customer_id = ?"], (customer_id,))
    return n


def erase_source_rows(
    settings: Settings, graph: IdentityGraph, key_hashes: list[str], customer_ids: list[str]
) -> int:
    """The person's rows in the extracts under ``settings.world_dir`` (the identity records
    and events the source systems delivered, raw identifiers included): a row goes when one
    of its identifiers hashes to one of the person's stored keys, or its ``customer_id`` is
    theirs. Files are rewritten atomically; rows removed. The sources keep their own copies:
    they must erase too, or a re-delivered extract brings the person back."""
    from features.identity import KEY_TYPES

    wanted, n = set(key_hashes), 0
    for path in sorted(settings.world_dir.glob("*.parquet")):
        names = pq.read_schema(path).names
        fields = [f for f in KEY_TYPES if f in names]
        if not fields and "customer_id" not in names:
            continue
        frame = pq.read_table(path).to_pandas()
        hit = pd.Series(False, index=frame.index)
        for field in fields:
            hit |= graph.column_hashes(field, frame[field]).isin(wanted)
        if "customer_id" in names:
            hit |= frame["customer_id"].isin(customer_ids)
        if hit.any():
            tmp = path.with_suffix(".erase.tmp")
            frame.loc[~hit].to_parquet(tmp, index=False)
            tmp.replace(path)  # readers see the old file or the new one, never half of one
            n += int(hit.sum())
    return n
