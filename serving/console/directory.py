"""Names and identifiers to show an agent, and finding a customer by any identifier.

The identity graph holds only salted hashes, so the names and the identifiers in the clear come
from the source records it was resolved from (``settings.console_directory``: the CSV or
Parquet given to ``nextbest identity resolve``; by default the simulated world's
``identities.parquet``). A record is matched to its customer by the graph's record hash, so the
directory is only read, never copied into another store. Loaded once per worker and file
version; absent, the console still works and says that no names are on file.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel
from sqlalchemy import select

from features import graph_store as gs
from features.identity import KEY_TYPES, Identifiers, salted_hash
from nextbest.settings import Settings
from serving.deps import Deps

SHOWN = ("source", "first_name", "last_name", "email", "phone", "loyalty_id", "login_id")
_cache: dict[Path, tuple[float, pd.DataFrame]] = {}
_lock = threading.Lock()


class Candidate(BaseModel):
    """One customer an identifier points to, with what the agent needs to tell them apart."""

    customer_id: str
    name: str
    matched: list[str]  # which kinds of identifier matched (phone, email...)
    records: int


def directory_path(settings: Settings) -> Path:
    return settings.console_directory or settings.world_dir / "identities.parquet"


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_parquet(path)


def directory(settings: Settings) -> pd.DataFrame | None:
    """The source records indexed by the graph's record hash, or None without a file."""
    path = directory_path(settings)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    with _lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        frame = _read(path)
        keep = [c for c in ("record_id", *SHOWN) if c in frame.columns]
        frame = frame[keep].astype(object).where(frame[keep].notna(), None)
        salt = settings.identity_salt.encode()
        frame.index = [salted_hash(salt, "record", str(r).strip()) for r in frame["record_id"]]
        _cache[path] = (mtime, frame)
        return frame


def records_of(ids: list[str], deps: Deps) -> list[dict[str, Any]]:
    """The source records of these customer ids (a person and the ids merged into it)."""
    book = directory(deps.settings)
    if book is None or deps.graph is None:
        return []
    with deps.graph.engine.connect() as conn:
        hashes = conn.execute(
            select(gs.records.c.record_hash).where(gs.records.c.customer_id.in_(ids))
        ).scalars()
        found = [h for h in hashes if h in book.index]
    rows = book.loc[found].to_dict("records") if found else []
    return [{k: (v if v not in ("", None) else None) for k, v in r.items()} for r in rows]


def name_of(records: list[dict[str, Any]]) -> str:
    """The name most records give, as written; '(no name on file)' without one."""
    names = Counter(
        " ".join(str(r[k]).strip() for k in ("first_name", "last_name") if r.get(k))
        for r in records
    )
    names.pop("", None)
    if not names:
        return "(no name on file)"
    # the most frequent spelling; among equals, one written as a name is (Theo Allen, not
    # THEO ALLEN or Theo allen)
    return max(names, key=lambda n: (names[n], n == " ".join(w.capitalize() for w in n.split())))


def held_keys(customer_id: str, deps: Deps) -> dict[str, int]:
    """How many keys of each type the graph holds for the customer (hashes: counts only)."""
    if deps.graph is None:
        return {}
    with deps.graph.engine.connect() as conn:
        rows = conn.execute(
            select(gs.keys.c.key_type).where(gs.keys.c.customer_id == customer_id)
        ).scalars()
        return dict(Counter(rows))


def find(query: str, deps: Deps) -> list[Candidate]:
    """Every customer the text names, read as each kind of identifier and as a customer id:
    one customer when it is unambiguous, several (with names) when it is shared, as a
    household landline is; none when unknown. Never a guess among several."""
    text = query.strip()
    if not text or deps.graph is None:
        return []
    graph = deps.graph
    as_each = Identifiers(**{f: text for f in KEY_TYPES})
    with graph.engine.connect() as conn:
        owners = gs.owners(conn, graph.key_hashes(as_each))
        given = gs.current_id(conn, text) if len(text) <= 64 else None
    matched: dict[str, list[str]] = {}
    if given:
        matched[given] = ["customer_id"]
    for field, customers in owners.items():
        for cid in customers:
            kind = "phone" if field == "phone" else field.removesuffix("_id")
            matched.setdefault(cid, []).append(kind)
    out = []
    for cid, kinds in matched.items():
        recs = records_of([cid], deps)
        out.append(Candidate(customer_id=cid, name=name_of(recs), matched=kinds,
                             records=len(recs)))  # fmt: skip
    return sorted(out, key=lambda c: (c.name, c.customer_id))
