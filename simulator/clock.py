"""Simulated time: int64 microseconds since the Unix epoch, UTC.

Everything inside the simulator computes on plain int64 arrays (fast, exact, deterministic) and
converts to ``timestamp[us, tz=UTC]`` only when writing Parquet.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

WORLD_START = datetime(2026, 1, 1, tzinfo=UTC)  # fixed so a seed always gives the same world
US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND
DAYS_PER_MONTH = 30.4375
START_US = int(WORLD_START.timestamp()) * US_PER_SECOND


def to_us(at: datetime | pd.Timestamp | np.ndarray | pd.Series | int) -> np.ndarray | int:
    """Microseconds since the epoch from datetimes (naive ones are taken as UTC) or ints."""
    if isinstance(at, int | np.integer):
        return int(at)
    if isinstance(at, datetime | pd.Timestamp):
        ts = pd.Timestamp(at)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return int(ts.value // 1000)
    if isinstance(at, pd.Series | pd.Index) and at.dtype.kind == "M":
        idx = pd.DatetimeIndex(at)  # stays vectorised (np.asarray would box tz-aware values)
    else:
        arr = np.asarray(at)
        if arr.dtype.kind in "iu":
            return arr.astype(np.int64)
        idx = pd.DatetimeIndex(pd.Series(arr))
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return (idx.as_unit("us").asi8).astype(np.int64)


def to_timestamp(us: np.ndarray) -> pd.Series:
    """int64 microseconds (or -1 / NaT for missing) as a tz-aware microsecond pandas Series."""
    arr = np.asarray(us, dtype=np.int64)
    out = pd.Series(pd.to_datetime(arr, unit="us", utc=True)).astype("datetime64[us, UTC]")
    out[arr < 0] = pd.NaT
    return out


_KEY_SPAN = 10**10  # seconds per person in the combined (person, second) sort key
_KEY_BASE = START_US // US_PER_SECOND - _KEY_SPAN // 2


def person_time_key(person: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """One int64 per (person, second) that sorts by person, then time."""
    return np.asarray(person, np.int64) * _KEY_SPAN + (
        np.asarray(ts, np.int64) // US_PER_SECOND - _KEY_BASE
    )


def last_before(
    ev_person: np.ndarray,
    ev_ts: np.ndarray,
    person: np.ndarray,
    ts: np.ndarray,
    inclusive: bool = True,
) -> np.ndarray:
    """Per query, the time of the same person's last event at (or strictly before) ``ts``;
    -1 if none. Second resolution; vectorised with one sort and a binary search."""
    key = person_time_key(ev_person, ev_ts)
    order = np.argsort(key, kind="stable")
    key, t = key[order], np.asarray(ev_ts, np.int64)[order]
    q = person_time_key(person, ts)
    pos = np.searchsorted(key, q, side="right" if inclusive else "left") - 1
    safe = np.maximum(pos, 0)
    hit = (pos >= 0) & (key[safe] // _KEY_SPAN == np.asarray(person)) if len(key) else pos >= 0
    return np.where(hit, t[safe] if len(t) else -1, -1)


def first_after(
    ev_person: np.ndarray, ev_ts: np.ndarray, person: np.ndarray, ts: np.ndarray
) -> np.ndarray:
    """Per query, the time of the same person's first event strictly after ``ts``; -1 if none."""
    key = person_time_key(ev_person, ev_ts)
    order = np.argsort(key, kind="stable")
    key, t = key[order], np.asarray(ev_ts, np.int64)[order]
    pos = np.searchsorted(key, person_time_key(person, ts), side="right")
    safe = np.minimum(pos, max(len(key) - 1, 0))
    hit = (pos < len(key)) & (key[safe] // _KEY_SPAN == np.asarray(person)) if len(key) else pos < 0
    return np.where(hit, t[safe] if len(t) else -1, -1)
