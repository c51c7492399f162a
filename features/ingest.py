"""The real-time path: one event -> identity -> online store push -> event log.

The event log has two parts under ``settings.event_log_dir``: ``batch.parquet`` (the history
written by ``features.build``) and ``live.db``, an append-only SQLite table (WAL,
``synchronous=FULL``) for events ingested one at a time. SQLite was chosen over Parquet part
files because one event per file would leave thousands of tiny files, while a WAL append is
durable on return and costs well under a millisecond. ``read_event_log`` unions both.

The log keeps ``customer_id`` and never raw identifiers: those live only as salted hashes in
the identity graph. Per-event pushes go to the online store only: Feast's file offline store
rewrites the whole Parquet file on every offline push, so the offline side of the real-time
view is rebuilt from the event log by ``features.build`` instead.

An event is logged once and pushed once: ``live.db`` also holds the logged events whose push
is not done (``unpushed``, written with the event), each with a lease its pusher holds. A push
that fails leaves the event there and raises, so the caller does not call it applied; the
client's retry finds it logged, and pushes it. Events logged before that table existed count
as pushed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.events import (
    BASKET_CLEARING_TYPES,
    BASKET_TYPES,
    VISIT_TYPES,
    Event,
    parse_event,
)
from nextbest.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

    from features.identity import IdentityGraph

PUSH_SOURCE = "customer_realtime_push"
REALTIME_VIEW = "customer_realtime"
REALTIME_FIELDS = (
    "basket_items",
    "basket_value",
    "basket_updated_at",
    "last_visit_at",
    "last_channel",
)
LOG_COLUMNS = (
    "event_id",
    "ts",
    "channel",
    "event_type",
    "customer_id",
    "product_id",
    "value",
    "quantity",
    "campaign_id",
    "consent_channel",
    "consent_value",
)
_lock = threading.Lock()
_connections: dict[Path, sqlite3.Connection] = {}


class PushInProgress(RuntimeError):
    """Another request holds this event's push lease: not applied as far as this one knows."""


# --- event log ---------------------------------------------------------------------------


def _live_db(settings: Settings) -> sqlite3.Connection:
    path = settings.event_log_dir / "live.db"
    with _lock:
        con = _connections.get(path)
        if con is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA busy_timeout=30000")
            con.execute("PRAGMA secure_delete=ON")  # an erased person's events leave no bytes
            con.execute(
                "CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, ts TEXT NOT NULL, "
                "channel TEXT, event_type TEXT, customer_id TEXT, product_id TEXT, value REAL, "
                "quantity INTEGER, campaign_id TEXT, consent_channel TEXT, consent_value INTEGER)"
            )
            # one customer's recent events without a scan (the console's activity, issue 19)
            con.execute(
                "CREATE INDEX IF NOT EXISTS ix_events_customer_ts ON events (customer_id, ts)"
            )
            # logged events not pushed yet; claimed_until: a pusher's lease (epoch seconds)
            con.execute(
                "CREATE TABLE IF NOT EXISTS unpushed (event_id TEXT PRIMARY KEY, "
                "claimed_until REAL NOT NULL DEFAULT 0)"
            )
            _connections[path] = con
    return con


def append_event(settings: Settings, event: Event, customer_id: str, claim: bool = False) -> bool:
    """Append one event, with its push to do; durable when this returns. False if
    ``event_id`` was already there. ``claim``: a new event's push lease is the caller's
    (``claim_push`` in the same commit)."""
    row = event.model_dump()
    row["customer_id"] = customer_id
    row["ts"] = event.ts.astimezone(UTC).isoformat()
    con = _live_db(settings)
    with _lock:
        con.execute("BEGIN IMMEDIATE")
        try:
            new = (
                con.execute(
                    f"INSERT OR IGNORE INTO events ({', '.join(LOG_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(LOG_COLUMNS))})",
                    [row[c] for c in LOG_COLUMNS],
                ).rowcount
                == 1
            )
            if new:
                until = time.time() + _lease(settings) if claim else 0.0
                con.execute(
                    "INSERT OR IGNORE INTO unpushed (event_id, claimed_until) VALUES (?, ?)",
                    [event.event_id, until],
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return new


def claim_push(settings: Settings, event_id: str) -> bool:
    """Take the lease on a logged event's push: True when this caller is now to push it;
    False when it is pushed already or another request holds the lease. The lease outlives
    any request, so a pusher that died frees it for a retry."""
    at, con = time.time(), _live_db(settings)
    with _lock:
        cur = con.execute(
            "UPDATE unpushed SET claimed_until = ? WHERE event_id = ? AND claimed_until <= ?",
            [at + _lease(settings), event_id, at],
        )
        return cur.rowcount == 1


def _lease(settings: Settings) -> float:
    """How long a push lease holds: longer than any request (three request timeouts)."""
    return 3.0 * settings.request_timeout


def push_pending(settings: Settings, event_id: str) -> bool:
    """Whether a logged event's push is still to do."""
    con = _live_db(settings)
    with _lock:
        found = con.execute("SELECT 1 FROM unpushed WHERE event_id = ?", [event_id]).fetchone()
    return found is not None


def _end_push(settings: Settings, event_id: str, done: bool) -> None:
    """Done: the event leaves ``unpushed``. Failed: its lease is freed for the retry."""
    con = _live_db(settings)
    with _lock:
        if done:
            con.execute("DELETE FROM unpushed WHERE event_id = ?", [event_id])
        else:
            con.execute("UPDATE unpushed SET claimed_until = 0 WHERE event_id = ?", [event_id])


def write_event_log(settings: Settings, events: pd.DataFrame) -> Path:
    """Replace the batch part of the log (microsecond UTC timestamps, no raw identifiers)."""
    path = settings.event_log_dir / "batch.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = events.loc[:, list(LOG_COLUMNS)].copy()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)  # readers never see a half-written file
    return path


def read_event_log(
    settings: Settings,
    event_types: Sequence[str] | None = None,
    columns: Sequence[str] = LOG_COLUMNS,
    customer_id: str | None = None,
) -> pd.DataFrame:
    """The whole log: the batch history plus every live event, ordered by time. ``event_types``
    keeps only those types and ``columns`` only those columns, read from the files as such (a
    journey sweep reads one event type of a year's log, not all of it); ``customer_id`` only
    that customer's events (an audience re-checks one customer per event)."""
    cols = list(columns)
    if event_types is not None and not event_types:
        return pd.DataFrame(columns=cols)
    parts = []
    batch = settings.event_log_dir / "batch.parquet"
    if batch.exists():
        wanted = [] if event_types is None else [("event_type", "in", list(event_types))]
        if customer_id is not None:
            wanted.append(("customer_id", "==", customer_id))
        parts.append(pd.read_parquet(batch, columns=cols, filters=wanted or None))
    query, args = f"SELECT {', '.join(cols)} FROM events", list(event_types or [])
    where = []
    if event_types is not None:
        where.append(f"event_type IN ({', '.join('?' * len(args))})")
    if customer_id is not None:
        where.append("customer_id = ?")
        args.append(customer_id)
    if where:
        query += " WHERE " + " AND ".join(where)
    live = pd.read_sql_query(query, _live_db(settings), params=args)
    if len(live):
        if "ts" in live:
            live["ts"] = pd.to_datetime(live["ts"], utc=True, format="ISO8601")
        if "consent_value" in live:
            live["consent_value"] = live["consent_value"].map({1: True, 0: False})
        parts.append(live)
    if not parts:
        return pd.DataFrame(columns=cols)
    with warnings.catch_warnings():  # all-null live columns (e.g. consent) are fine to widen
        warnings.simplefilter("ignore", FutureWarning)
        frame = pd.concat(parts, ignore_index=True)
    if "ts" not in frame:
        return frame
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    return frame.sort_values("ts", kind="stable").reset_index(drop=True)


def read_customer_events(
    settings: Settings, customer_id: str, event_types: Sequence[str], since: datetime
) -> pd.DataFrame:
    """One customer's events of these types at or after ``since`` (customer_id, ts,
    event_type, product_id, channel): the batch part's recent rows, read once per file
    version and window start and kept by customer, plus the live part by its index. What a
    target group re-checks on every event, in about a millisecond instead of a log scan."""
    cols = ["customer_id", "ts", "event_type", "product_id", "channel"]
    parts = [_recent_batch(settings, tuple(sorted(event_types)), since).get(customer_id)]
    con = _live_db(settings)
    marks = ", ".join("?" * len(event_types))
    with _lock:
        rows = con.execute(
            f"SELECT {', '.join(cols)} FROM events WHERE customer_id = ? "
            f"AND event_type IN ({marks})",
            [customer_id, *event_types],
        ).fetchall()
    if rows:
        live = pd.DataFrame(rows, columns=cols)
        live["ts"] = pd.to_datetime(live["ts"], utc=True, format="ISO8601")
        parts.append(live.loc[live["ts"] >= since])
    found = [p for p in parts if p is not None and len(p)]
    if not found:
        return pd.DataFrame(columns=cols)
    return pd.concat(found, ignore_index=True) if len(found) > 1 else found[0]


_RECENT: dict[tuple[str, tuple[str, ...]], tuple[int, datetime, dict[str, pd.DataFrame]]] = {}
RECENT_MARGIN = pd.Timedelta(days=1)  # a back-dated event by up to this reuses the cache


def _recent_batch(
    settings: Settings, event_types: tuple[str, ...], since: datetime
) -> dict[str, pd.DataFrame]:
    """The batch part's rows of these types since ``since``, by customer, cached until the
    file changes or an earlier window start is asked for."""
    path = settings.event_log_dir / "batch.parquet"
    if not path.exists():
        return {}
    key, stamp = (str(path), event_types), path.stat().st_mtime_ns
    cached = _RECENT.get(key)
    if cached is not None and cached[0] == stamp and cached[1] <= since:
        return cached[2]
    start = pd.Timestamp(since) - RECENT_MARGIN
    frame = pd.read_parquet(
        path,
        columns=["customer_id", "ts", "event_type", "product_id", "channel"],
        filters=[("event_type", "in", list(event_types)), ("ts", ">=", start)],
    )
    by_customer = {str(c): g.reset_index(drop=True) for c, g in frame.groupby("customer_id")}
    _RECENT[key] = (stamp, start.to_pydatetime(), by_customer)
    return by_customer


def recent_events(settings: Settings, customer_ids: Sequence[str], limit: int = 20) -> list[dict]:
    """The latest live events of these customer ids (a person and the ids merged into it),
    newest first, by the (customer_id, ts) index: what an agent sees happened lately."""
    if not customer_ids:
        return []
    cols = ("event_id", "ts", "channel", "event_type", "product_id", "value", "campaign_id",
            "consent_channel", "consent_value")  # fmt: skip
    marks = ", ".join("?" * len(customer_ids))
    who = "customer_id = ?" if len(customer_ids) == 1 else f"customer_id IN ({marks})"
    query = f"SELECT {', '.join(cols)} FROM events WHERE {who} ORDER BY ts DESC LIMIT ?"
    con = _live_db(settings)
    with _lock:
        rows = con.execute(query, [*customer_ids, limit]).fetchall()
    return [dict(zip(cols, r, strict=True)) for r in rows]


# --- live state --------------------------------------------------------------------------


def next_state(state: dict[str, Any], event: Event) -> dict[str, Any] | None:
    """The real-time row after ``event``, or None when the event does not touch it. Same rules
    as ``features.aggregates.realtime_features``: a checkout or purchase empties the basket."""
    new = {f: state.get(f) for f in REALTIME_FIELDS}
    new["basket_items"] = int(new["basket_items"] or 0)
    new["basket_value"] = float(new["basket_value"] or 0.0)
    ts = event.ts.astimezone(UTC)
    if event.event_type in BASKET_TYPES:
        sign = 1 if event.event_type == "basket_add" else -1
        new["basket_items"] = max(new["basket_items"] + sign * (event.quantity or 1), 0)
        new["basket_value"] = max(new["basket_value"] + sign * (event.value or 0.0), 0.0)
        new["basket_updated_at"] = ts
    elif event.event_type in BASKET_CLEARING_TYPES:
        new.update(basket_items=0, basket_value=0.0, basket_updated_at=None)
    elif event.event_type in VISIT_TYPES:
        new.update(last_visit_at=ts, last_channel=event.channel)
    else:
        return None
    return new


def read_realtime(store: FeatureStore, customer_id: str) -> dict[str, Any]:
    """The customer's current real-time row from the online store (None values if new)."""
    refs = [f"{REALTIME_VIEW}:{f}" for f in REALTIME_FIELDS]
    out = store.get_online_features(features=refs, entity_rows=[{"customer_id": customer_id}])
    return {k: v[0] for k, v in out.to_dict().items()}


def _realtime_view(store: FeatureStore) -> Any:
    """The registered real-time view, cached on the store (a registry lookup parses protos)."""
    cache: dict[str, Any] = store.__dict__.setdefault("_nextbest_views", {})
    if REALTIME_VIEW not in cache:
        cache[REALTIME_VIEW] = store.get_feature_view(REALTIME_VIEW)
    return cache[REALTIME_VIEW]


def push_realtime(store: FeatureStore, customer_id: str, row: dict[str, Any], at: datetime) -> None:
    """Write one real-time row to the online store.

    ``FeatureStore.push`` re-reads every view and service from the registry and goes through
    pandas and Arrow on each call (~15 ms, most of an event's cost). This builds the protos the
    provider's ``online_write_batch`` takes (the call ``push`` ends in) from the cached view."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import python_values_to_proto_values

    view = _realtime_view(store)
    key = EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=customer_id)])
    values = {
        f.name: python_values_to_proto_values([row.get(f.name)], f.dtype.to_value_type())[0]
        for f in view.features
    }
    store.provider.online_write_batch(store.config, view, [(key, values, at, None)], None)


def ingest_event(
    event: Event | dict[str, Any],
    *,
    store: FeatureStore,
    graph: IdentityGraph,
    settings: Settings,
) -> dict[str, Any]:
    """Validate, resolve (creating a customer for new identifiers), append to the event log,
    then update and push the real-time row. The log comes first so everything visible online
    is in the log; a repeated ``event_id`` (a client retry) is logged and pushed once.
    Raises ``InvalidEvent`` on bad input, before anything is written; the online store's
    error when the push fails, and ``PushInProgress`` when another request is pushing this
    event: then the event is logged, and a retry pushes it."""
    from features.identity import Identifiers

    event = parse_event(event)
    customer_id = graph.link(Identifiers(**event.identifier_dict()))
    new = append_event(settings, event, customer_id, claim=True)
    row, registered = None, _registered(store)
    if new or claim_push(settings, event.event_id):
        try:
            if registered:  # else nothing to push to (features not built): logged, that is all
                row = _push(store, customer_id, event)
        except BaseException:
            _end_push(settings, event.event_id, done=False)
            raise
        _end_push(settings, event.event_id, done=True)
    elif push_pending(settings, event.event_id):
        raise PushInProgress(f"event {event.event_id} is being pushed by another request")
    out = {
        "event_id": event.event_id,
        "customer_id": customer_id,
        "pushed": row is not None,
        "realtime": row,
        "duplicate": not new,
    }
    if not registered:
        out["online"] = f"skipped: no {REALTIME_VIEW} view in the feature store"
    return out


def _push(store: FeatureStore, customer_id: str, event: Event) -> dict[str, Any] | None:
    """Update and push the customer's real-time row; the row pushed, or None (untouched)."""
    with _customer_lock(customer_id):  # read-modify-write of one customer's live row
        row = next_state(read_realtime(store, customer_id), event)
        if row is not None:
            # stamped with the later of event and arrival time: Redis drops a write that is
            # not newer than the stored row, and a late event must still count
            push_realtime(store, customer_id, row, max(event.ts, datetime.now(UTC)))
    return row


def _registered(store: FeatureStore | None) -> bool:
    """Whether the store has the real-time view: not, in a home whose features are not built
    yet, which is no outage (a retry would find it the same), so no push is owed."""
    from feast.errors import FeatureViewNotFoundException

    if store is None:
        return False
    try:
        _realtime_view(store)
    except FeatureViewNotFoundException:
        return False
    return True


_stripes = [threading.Lock() for _ in range(64)]


def _customer_lock(customer_id: str) -> threading.Lock:
    """One of 64 striped locks: bounded memory, and two events of one customer never race."""
    return _stripes[hash(customer_id) % len(_stripes)]
