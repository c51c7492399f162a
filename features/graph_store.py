"""SQL tables of the identity graph and the small reads/writes ``features.identity`` needs.

SQLAlchemy Core, so the same code runs on SQLite (default, in the ledger file) and PostgreSQL.
Nothing here sees a plain identifier: keys, records and names arrive as salted hashes.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    tuple_,
    union_all,
    update,
)

from nextbest.db import create_tables

metadata = MetaData()
customers = Table(
    "identity_customers",
    metadata,
    Column("customer_id", String(16), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
records = Table(
    "identity_records",
    metadata,
    Column("record_hash", String(32), primary_key=True),
    Column("customer_id", String(16), nullable=False, index=True),
    Column("first_hash", String(32)),
    Column("last_hash", String(32)),
    Column("first_variants", Text),  # space-separated salted hashes of typo variants
    Column("last_variants", Text),
    # the source's record id (a pseudonymous key that `identity explain` and `split` name)
    Column("record_id", String(256)),
    Column("key_hashes", Text),  # space-separated "type:hash" of the keys the record holds
    Index("ix_identity_records_name", "first_hash", "last_hash"),
)
# Why records are together: one row per union the linker made. Ends are "r:<record hash>" or
# "c:<customer id>" (a stored customer the batch joined).
links = Table(
    "identity_links",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("a_ref", String(80), nullable=False, index=True),
    Column("b_ref", String(80), nullable=False, index=True),
    Column("rule", String(40), nullable=False),
    Column("made_at", DateTime(timezone=True), nullable=False),
)
# A steward's split: the records of side 1 were taken from those of side 0; no later run
# may put records of both sides of one split in one customer again.
splits = Table(
    "identity_splits",
    metadata,
    Column("split_id", Integer, primary_key=True),
    Column("record_hash", String(32), primary_key=True),
    Column("side", Integer, nullable=False),
    Index("ix_identity_splits_record", "record_hash"),
)
keys = Table(
    "identity_keys",
    metadata,
    Column("key_hash", String(32), primary_key=True),
    Column("customer_id", String(16), primary_key=True),
    Column("key_type", String(12), nullable=False),
    Index("ix_identity_keys_customer", "customer_id"),
)
merges = Table(
    "identity_merges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("from_id", String(16), nullable=False, index=True),
    Column("into_id", String(16), nullable=False, index=True),
    Column("merged_at", DateTime(timezone=True), nullable=False),
)
HELD = ("login", "loyalty", "mobile", "phone", "email")  # as features.linkage.HELD
CHUNK = 5000  # bound parameters per IN (...) query, well below SQLite's and PostgreSQL's limits


def ensure_schema(engine: Engine) -> None:
    """Create missing tables, and the nullable columns and indexes older graphs lack, under
    ``nextbest.db.create_tables``' lock (several workers may start at once)."""
    create_tables(engine, metadata)


def fetch(conn: Connection, col: Any, values: list[str], *cols: Any) -> list[tuple]:
    """Rows whose ``col`` is one of ``values``, in chunks."""
    rows: list[tuple] = []
    for i in range(0, len(values), CHUNK):
        part = values[i : i + CHUNK]
        rows += [tuple(r) for r in conn.execute(select(*cols).where(col.in_(part)))]
    return rows


def name_holders(conn: Connection, fulls: list[tuple[str, str]]) -> set[str]:
    """Customers with a record of one of these (first, last) name hashes."""
    found: set[str] = set()
    for i in range(0, len(fulls), CHUNK // 2):
        pairs = tuple_(records.c.first_hash, records.c.last_hash).in_(fulls[i : i + CHUNK // 2])
        found |= {c for (c,) in conn.execute(select(records.c.customer_id).where(pairs))}
    return found


def customer_info(conn: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    """What the linker must know of stored customers: size, name hashes, held keys, age, and
    their record hashes (what splits and links name)."""
    info: dict[str, dict[str, Any]] = {
        c: {
            "size": 0,
            "firsts": set(),
            "lasts": set(),
            "fulls": set(),
            "held": {},
            "created": None,
            "records": [],
        }
        for c in ids
    }
    cols = (records.c.customer_id, records.c.first_hash, records.c.last_hash)
    cols += (records.c.first_variants, records.c.last_variants, records.c.record_hash)
    for cid, fh, lh, fv, lv, rh in fetch(conn, records.c.customer_id, ids, *cols):
        info[cid]["size"] += 1
        info[cid]["records"].append(rh)
        if fv:
            info[cid]["firsts"].add((frozenset(fv.split()), None))
        if lv:
            info[cid]["lasts"].add((frozenset(lv.split()), None))
        if fh and lh:
            info[cid]["fulls"].add((fh, lh))
    cols = (keys.c.customer_id, keys.c.key_type, keys.c.key_hash)
    for cid, kind, kh in fetch(conn, keys.c.customer_id, ids, *cols):
        if kind in HELD:
            info[cid]["held"].setdefault(kind, set()).add(kh)
    cols = (customers.c.customer_id, customers.c.created_at)
    for cid, created in fetch(conn, customers.c.customer_id, ids, *cols):
        info[cid]["created"] = created.replace(tzinfo=UTC)
    return info


# Prebuilt once: a fixed number of bound slots keeps SQLAlchemy's compiled-statement cache warm,
# which is most of the real-time lookup's cost (an expanding IN recompiles on every call).
OWNER_SLOTS = 5
_OWNERS = select(keys.c.key_hash, keys.c.customer_id).where(
    keys.c.key_hash.in_([bindparam(f"h{i}") for i in range(OWNER_SLOTS)])
)


def owners(conn: Connection, hashes: dict[str, str]) -> dict[str, set[str]]:
    """field -> customers holding that key: one indexed query for the real-time path."""
    found: dict[str, set[str]] = defaultdict(set)
    by_hash = {h: f for f, h in hashes.items()}
    values = list(by_hash)
    for i in range(0, len(values), OWNER_SLOTS):
        part = values[i : i + OWNER_SLOTS]
        params = {f"h{k}": part[k] if k < len(part) else "" for k in range(OWNER_SLOTS)}
        for kh, cid in conn.execute(_OWNERS, params):
            found[by_hash[kh]].add(cid)
    return found


# One prebuilt query (a cached compiled statement): /decide verifies every given id with it.
_CURRENT = select(customers.c.customer_id).where(
    customers.c.customer_id
    == func.coalesce(
        select(merges.c.into_id).where(merges.c.from_id == bindparam("cid")).scalar_subquery(),
        bindparam("cid"),
    )
)


def current_id(conn: Connection, customer_id: str) -> str | None:
    """A stored customer id, following a recorded merge; None if unknown or erased."""
    row = conn.execute(_CURRENT, {"cid": customer_id}).first()
    return row[0] if row else None


def current_ids(conn: Connection, customer_ids: list[str]) -> dict[str, str]:
    """``current_id`` of many ids in two chunked queries: id -> the stored id it goes by now
    (ids unknown or erased are left out)."""
    if not customer_ids:
        return {}
    into = dict(fetch(conn, merges.c.from_id, customer_ids, merges.c.from_id, merges.c.into_id))
    now = {c: into.get(c, c) for c in customer_ids}
    col = customers.c.customer_id
    stored = {c for (c,) in fetch(conn, col, sorted(set(now.values())), col)}
    return {c: cur for c, cur in now.items() if cur in stored}


def key_owners(conn: Connection, hashes: list[str]) -> dict[str, set[str]]:
    """key hash -> customers holding it, for many hashes in chunked queries."""
    found: dict[str, set[str]] = defaultdict(set)
    for kh, cid in fetch(conn, keys.c.key_hash, hashes, keys.c.key_hash, keys.c.customer_id):
        found[kh].add(cid)
    return found


# One prebuilt query (a cached compiled statement): the holdout assignment asks it once per
# person and worker on the decision path.
_PERSON = union_all(
    select(literal("into"), merges.c.into_id).where(merges.c.from_id == bindparam("cid")),
    select(literal("from"), merges.c.from_id).where(merges.c.into_id == bindparam("cid")),
    select(literal("key"), keys.c.key_hash).where(keys.c.customer_id == bindparam("cid")),
)


def person_keys(conn: Connection, customer_id: str) -> tuple[str, list[str]]:
    """The id the customer goes by now (a recorded merge followed), and the ids merged into
    that one and the hashes of the keys it holds."""
    rows = conn.execute(_PERSON, {"cid": customer_id}).all()
    into = [v for kind, v in rows if kind == "into"]
    if into:  # merged away: its keys and merges moved to the survivor
        return into[0], person_keys(conn, into[0])[1]
    return customer_id, [v for _, v in rows]


def person_keys_many(conn: Connection, ids: list[str]) -> dict[str, tuple[str, list[str]]]:
    """``person_keys`` of many customers in chunked queries (each id's rows as the one-id
    query returns them)."""
    rows: dict[str, list[tuple[str, str]]] = {c: [] for c in ids}
    for i in range(0, len(ids), CHUNK // 3):
        part = ids[i : i + CHUNK // 3]
        q = union_all(
            select(literal("into"), merges.c.from_id, merges.c.into_id).where(
                merges.c.from_id.in_(part)
            ),
            select(literal("from"), merges.c.into_id, merges.c.from_id).where(
                merges.c.into_id.in_(part)
            ),
            select(literal("key"), keys.c.customer_id, keys.c.key_hash).where(
                keys.c.customer_id.in_(part)
            ),
        )
        for kind, cid, value in conn.execute(q):
            rows[cid].append((kind, value))
    out: dict[str, tuple[str, list[str]]] = {}
    moved: dict[str, str] = {}
    for cid, found in rows.items():
        into = [v for kind, v in found if kind == "into"]
        if into:  # merged away: its keys and merges moved to the survivor
            moved[cid] = into[0]
        else:
            out[cid] = (cid, [v for _, v in found])
    if moved:
        survivors = person_keys_many(conn, sorted(set(moved.values())))
        out |= {cid: (into, survivors[into][1]) for cid, into in moved.items()}
    return out


def merged_into(conn: Connection) -> dict[str, str]:
    """Every merged-away id -> the id it was (finally) merged into."""
    return dict(conn.execute(select(merges.c.from_id, merges.c.into_id)).all())


def has_login(conn: Connection, customer_id: str) -> bool:
    q = select(keys.c.key_hash).where(keys.c.customer_id == customer_id, keys.c.key_type == "login")
    return conn.execute(q.limit(1)).first() is not None


def created_at(conn: Connection, ids: list[str]) -> dict[str, datetime]:
    q = select(customers.c.customer_id, customers.c.created_at)
    rows = conn.execute(q.where(customers.c.customer_id.in_(ids))).all()
    return {cid: ts.replace(tzinfo=UTC) for cid, ts in rows}


def merge_customer(conn: Connection, old: str, new: str, now: datetime) -> None:
    """Fold customer ``old`` into ``new``: records and keys move, the merge is recorded."""
    conn.execute(update(records).where(records.c.customer_id == old).values(customer_id=new))
    have = {k for (k,) in conn.execute(select(keys.c.key_hash).where(keys.c.customer_id == new))}
    q = select(keys.c.key_hash, keys.c.key_type).where(keys.c.customer_id == old)
    moving = conn.execute(q).all()
    conn.execute(delete(keys).where(keys.c.customer_id == old))
    rows = [{"key_hash": k, "customer_id": new, "key_type": t} for k, t in moving if k not in have]
    if rows:
        conn.execute(insert(keys), rows)
    conn.execute(delete(customers).where(customers.c.customer_id == old))
    conn.execute(update(merges).where(merges.c.into_id == old).values(into_id=new))
    conn.execute(insert(merges).values(from_id=old, into_id=new, merged_at=now))


def write_batch(
    conn: Connection,
    new_customers: list[str],
    record_rows: list[dict[str, Any]],
    key_rows: set[tuple[str, str, str]],
    now: datetime,
) -> None:
    """Insert new customers, records not stored yet, and (key, customer) pairs not stored yet."""
    if new_customers:
        conn.execute(
            insert(customers), [{"customer_id": c, "created_at": now} for c in new_customers]
        )
    hashes = [r["record_hash"] for r in record_rows]
    stored = {h for (h,) in fetch(conn, records.c.record_hash, hashes, records.c.record_hash)}
    rows = [r for r in record_rows if r["record_hash"] not in stored]
    if rows:
        conn.execute(insert(records), rows)
    key_hashes = sorted({k for k, _, _ in key_rows})
    have = set(fetch(conn, keys.c.key_hash, key_hashes, keys.c.key_hash, keys.c.customer_id))
    rows = [
        {"key_hash": k, "customer_id": c, "key_type": t}
        for k, c, t in sorted(key_rows)
        if (k, c) not in have
    ]
    if rows:
        conn.execute(insert(keys), rows)


def erase_customer(conn: Connection, customer_id: str) -> int:
    """Delete every row of a customer (keys, records, merges into and out of it); rows
    deleted. On SQLite the ledger engine's ``secure_delete`` zeroes the freed bytes."""
    refs = [
        f"r:{h}"
        for (h,) in conn.execute(
            select(records.c.record_hash).where(records.c.customer_id == customer_id)
        )
    ] + [f"c:{customer_id}"]
    hashes = [r[2:] for r in refs[:-1]]
    n = 0
    for i in range(0, len(refs), CHUNK):
        part = refs[i : i + CHUNK]
        q = delete(links).where(links.c.a_ref.in_(part) | links.c.b_ref.in_(part))
        n += conn.execute(q).rowcount
    for i in range(0, len(hashes), CHUNK):
        q = delete(splits).where(splits.c.record_hash.in_(hashes[i : i + CHUNK]))
        n += conn.execute(q).rowcount
    for table, col in (
        (keys, keys.c.customer_id),
        (records, records.c.customer_id),
        (customers, customers.c.customer_id),
        (merges, merges.c.into_id),
        (merges, merges.c.from_id),
    ):
        n += conn.execute(delete(table).where(col == customer_id)).rowcount
    return n


def write_links(conn: Connection, rows: list[tuple[str, str, str]], now: datetime) -> None:
    """Remember why records were joined: (a_ref, b_ref, rule) rows."""
    if rows:
        conn.execute(
            insert(links),
            [{"a_ref": a, "b_ref": b, "rule": r, "made_at": now} for a, b, r in rows],
        )


def split_sides(conn: Connection, record_hashes: list[str]) -> dict[str, set[tuple[int, int]]]:
    """record hash -> the (split, side) pairs it is on, for the records that were split."""
    cols = (splits.c.record_hash, splits.c.split_id, splits.c.side)
    found: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for rh, sid, side in fetch(conn, splits.c.record_hash, record_hashes, *cols):
        found[rh].add((sid, side))
    return found
