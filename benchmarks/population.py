"""A synthetic population written straight into the home's Feast SQLite online store and the
identity graph, fast enough for a million customers (``nextbest bench batch``).

``features materialize`` runs about 3.7k rows/s (Feast's ``online_write_batch``: one
``execute`` and one ``ValueProto`` per feature value); a million customers would take hours.
Here the values are encoded once per distinct value by Feast's own converter, and the rows go
in with ``executemany``, one transaction per chunk, in primary-key order, into the tables and
columns ``online_write_batch`` writes. A test reads profiles back through ``FeatureReader``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from nextbest.settings import Settings

PREFIX = "pop"
CHUNK = 20_000  # customers per transaction: bounded memory, few commits
PLANS = ("prepaid", "postpaid_s", "postpaid_m", "postpaid_l")
CHANNELS = ("web", "app", "email", "sms", "store")


def customer_ids(start: int, stop: int) -> list[str]:
    """Stable, sortable ids (sequential ids give ascending entity keys: appends, not splits)."""
    return [f"{PREFIX}{i:07d}" for i in range(start, stop)]


def _column(dtype: Any, name: str, n: int, rng: np.random.Generator, end: datetime) -> list:
    """One feature's values for ``n`` customers: few distinct values per column (cents, whole
    minutes), as real profiles have, so each distinct value is encoded once."""
    from feast.types import Bool, Float64, Int64, String, UnixTimestamp

    if dtype == Int64:
        return rng.integers(0, 20, n).tolist()
    if dtype == Float64 and "rate" in name:
        return np.round(rng.random(n), 2).tolist()
    if dtype == Float64:
        return np.round(rng.gamma(2.0, 10.0, n), 2).tolist()
    if dtype == Bool:
        return (rng.random(n) < 0.8).tolist()
    if dtype == String:
        return rng.choice(PLANS if name == "plan" else CHANNELS, n).tolist()
    if dtype == UnixTimestamp:
        minutes = rng.integers(1, 10_000, n)
        return [end - timedelta(minutes=int(m)) for m in minutes]
    raise TypeError(f"{name}: no synthetic values for {dtype}")


def stored_views(store: Any) -> list[Any]:
    """The views ``features materialize`` fills (online, with a batch source), written here
    whether or not their source files exist."""
    from features.store import online_batch_views

    return online_batch_views(store)


def synthetic_columns(
    views: list[Any], start: int, stop: int, end: datetime, seed: int = 7
) -> dict[str, list[Any]]:
    """Every stored feature of customers ``start..stop``, seeded by the chunk's start, so any
    chunk can be generated again (the read-back test does)."""
    rng = np.random.default_rng([seed, start])
    n = stop - start
    return {f.name: _column(f.dtype, f.name, n, rng, end) for v in views for f in v.features}


class Encoder:
    """Feast's ``ValueProto`` bytes and ``value_text`` of a Python value, once per distinct
    value and type (``python_values_to_proto_values`` and ``extract_text_and_num``, as
    ``online_write_batch`` stores them)."""

    def __init__(self) -> None:
        self._memo: dict[Any, dict[Any, tuple[bytes, str | None]]] = {}

    def column(self, values: list[Any], kind: Any) -> list[tuple[bytes, str | None]]:
        from feast.infra.online_stores.helpers import extract_text_and_num
        from feast.type_map import python_values_to_proto_values

        memo = self._memo.setdefault(kind, {})
        new = list(set(values).difference(memo))
        if new:
            for v, proto in zip(new, python_values_to_proto_values(new, kind), strict=True):
                memo[v] = (proto.SerializeToString(), extract_text_and_num(proto, False)[0])
        return [memo[v] for v in values]


def _connect(settings: Settings) -> sqlite3.Connection:
    """The online store's file for a bulk load: no fsync per commit (a crash mid-load leaves a
    store to write again; it is a benchmark's cache)."""
    conn = sqlite3.connect(settings.feature_dir / "online.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB of pages: the indexes stay in memory
    return conn


def write_profiles(
    settings: Settings,
    customers: int,
    end: datetime,
    advance: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """``customers`` synthetic profiles in every stored view; returns rows, seconds, rows/s."""
    from feast.infra.online_stores.sqlite import _quote_id, _table_id

    from features.online_read import entity_key_bytes
    from features.store import apply_repo, get_store

    store = get_store(settings)
    apply_repo(store)  # creates the online tables as `features apply` does
    views = stored_views(store)
    versioned = getattr(store.config.registry, "enable_online_feature_view_versioning", False)
    join_key = views[0].join_keys[0]
    tables = [
        (
            _quote_id(_table_id(store.project, v, versioned)),
            [(f.name, f.dtype.to_value_type()) for f in v.features],
        )
        for v in views
    ]
    stamp = end.astimezone(UTC).replace(tzinfo=None).isoformat(" ")  # as sqlite3 adapts it
    encoder, rows, t0 = Encoder(), 0, time.perf_counter()
    conn = _connect(settings)
    indexes = _drop_indexes(conn, [t for t, _ in tables])
    try:
        for at in range(0, customers, CHUNK):
            stop = min(at + CHUNK, customers)
            ids = customer_ids(at, stop)
            keys = [entity_key_bytes(store.config, join_key, c) for c in ids]
            columns = synthetic_columns(views, at, stop, end)
            conn.execute("BEGIN")
            for table, fields in tables:
                sql = (
                    f"INSERT OR REPLACE INTO {table} (entity_key, feature_name, value, value_text,"
                    " event_ts, created_ts) VALUES (?, ?, ?, ?, ?, ?)"
                )
                encoded = [(name, encoder.column(columns[name], kind)) for name, kind in fields]
                conn.executemany(sql, _rows(keys, sorted(encoded), stamp))
                rows += len(keys) * len(fields)
            conn.execute("COMMIT")
            if advance:
                advance(stop - at)
    finally:
        for sql in indexes:  # rebuilt once, sorted, instead of one insert per row
            conn.execute(sql)
        conn.close()
    seconds = time.perf_counter() - t0
    return {"customers": customers, "rows": rows, "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds, 1) if seconds else None}  # fmt: skip


def _drop_indexes(conn: sqlite3.Connection, tables: list[str]) -> list[str]:
    """Drop the tables' secondary indexes (Feast's ``<table>_ek``); their ``CREATE`` SQL."""
    names = [t.strip('"') for t in tables]
    found = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        f" AND tbl_name IN ({','.join('?' * len(names))})",
        names,
    ).fetchall()
    for name, _ in found:
        conn.execute(f'DROP INDEX "{name}"')
    return [sql for _, sql in found]


def _rows(
    keys: list[bytes], encoded: list[tuple[str, list[tuple[bytes, str | None]]]], stamp: str
) -> Iterator[tuple]:
    """Rows in primary-key order (entity key, then feature name): every insert an append."""
    for i, key in enumerate(keys):
        for name, values in encoded:
            value, text = values[i]
            yield key, name, value, text, stamp, stamp


def register(
    settings: Settings, customers: int, advance: Callable[[int], Any] | None = None
) -> float:
    """The population in the identity graph (``identity_customers``), as a features build
    leaves real customers: /decide reads features only for an id the graph knows. Seconds."""
    from sqlalchemy import insert

    from features import graph_store as gs
    from features.identity import graph_for

    graph, created, t0 = graph_for(settings), datetime.now(UTC), time.perf_counter()
    for at in range(0, customers, CHUNK * 5):
        stop = min(at + CHUNK * 5, customers)
        rows = [{"customer_id": c, "created_at": created} for c in customer_ids(at, stop)]
        with graph.engine.begin() as conn:
            conn.execute(insert(gs.customers).prefix_with("OR IGNORE", dialect="sqlite"), rows)
        if advance:
            advance(stop - at)
    return round(time.perf_counter() - t0, 3)
