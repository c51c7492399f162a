"""What data stewards do with the identity graph: see why records were linked, undo a merge.

``explain`` lists a customer's records and, for every union that put them together, the rule
that made it (persisted by ``IdentityGraph.resolve``). ``split`` moves records to a customer of
their own and remembers it: the linker refuses to join the two sides again in later runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, delete, func, insert, select, update

from features import graph_store as gs
from features.identity import IdentityGraph


class StewardError(ValueError):
    """A steward's request the graph cannot carry out; the message names the field."""


class Link(BaseModel):
    """One union: two records (or a record and a customer stored before) and its rule."""

    a: str
    b: str
    rule: str
    made_at: datetime


class Explanation(BaseModel):
    """A customer's records and the links that made them one customer."""

    customer_id: str
    merged_from: list[str]
    records: list[dict[str, Any]]
    links: list[Link]
    splits: list[dict[str, int]]


def _current(conn: Connection, customer_id: str) -> str:
    cid = gs.current_id(conn, customer_id)
    if cid is None:
        raise StewardError(f"customer_id {customer_id!r}: not in the identity graph")
    return cid


def _records(conn: Connection, cid: str) -> list[tuple[str, str | None, str | None]]:
    r = gs.records.c
    q = select(r.record_hash, r.record_id, r.key_hashes).where(r.customer_id == cid)
    return [tuple(row) for row in conn.execute(q.order_by(r.record_id, r.record_hash))]


def _kinds(key_hashes: str | None) -> list[str]:
    return sorted(token.split(":", 1)[0] for token in (key_hashes or "").split())


def explain(graph: IdentityGraph, customer_id: str) -> Explanation:
    """The customer's records (record id and the kinds of identifier each holds) and every
    link between them, oldest first, with its rule."""
    with graph.engine.connect() as conn:
        cid = _current(conn, customer_id)
        rows = _records(conn, cid)
        m = gs.merges.c
        merged = sorted(c for (c,) in conn.execute(select(m.from_id).where(m.into_id == cid)))
        name = {f"r:{h}": rid or f"(record {h[:8]})" for h, rid, _ in rows}
        name |= {f"c:{c}": f"customer {c}" for c in [cid, *merged]}
        refs = sorted(name)
        found: dict[int, Any] = {}
        for column in (gs.links.c.a_ref, gs.links.c.b_ref):
            for row in gs.fetch(conn, column, refs, *gs.links.c):
                found[row[0]] = row
        s = gs.splits.c
        hashes = [h for h, _, _ in rows]
        sides = gs.fetch(conn, s.record_hash, hashes, s.split_id, s.side)
    links = [
        Link(a=min(x, y), b=max(x, y), rule=rule, made_at=made.replace(tzinfo=UTC))
        for _, a, b, rule, made in sorted(found.values())
        if a in name and b in name
        for x, y in [(name[a], name[b])]
    ]
    return Explanation(
        customer_id=cid,
        merged_from=merged,
        records=[{"record_id": rid, "identifiers": _kinds(kh)} for _, rid, kh in rows],
        links=links,
        splits=[{"split_id": sid, "side": side} for sid, side in sorted(set(sides))],
    )


def split(graph: IdentityGraph, customer_id: str, record_ids: list[str]) -> dict[str, Any]:
    """Move ``record_ids`` of a customer to a new customer, with the identifiers only they
    hold (identifiers both sides hold stay with both), drop the links between the two sides,
    and remember the split so no later run joins the sides again."""
    wanted = list(dict.fromkeys(r.strip() for r in record_ids if r.strip()))
    if not wanted:
        raise StewardError("--records: give at least one record_id to split off")
    now = datetime.now(UTC)
    with graph.engine.begin() as conn:
        cid = _current(conn, customer_id)
        rows = {h: kh for h, _, kh in _records(conn, cid)}
        moved = {}
        for rid in wanted:
            h = graph.record_hash(rid)
            if h not in rows:
                raise StewardError(f"--records: {rid!r} is not a record of customer {cid}")
            moved[h] = rows[h]
        kept = {h: kh for h, kh in rows.items() if h not in moved}
        if not kept:
            raise StewardError(f"--records: that is every record of customer {cid}; keep one")
        new_id = "C" + graph.salted("customer", "split:" + min(moved))[:12]
        conn.execute(insert(gs.customers).values(customer_id=new_id, created_at=now))
        r, k = gs.records.c, gs.keys.c
        conn.execute(update(gs.records).where(r.record_hash.in_(moved)).values(customer_id=new_id))
        moving = {tuple(t.split(":", 1)) for kh in moved.values() for t in (kh or "").split()}
        staying = {t.split(":", 1)[1] for kh in kept.values() for t in (kh or "").split()}
        if moving:
            conn.execute(
                insert(gs.keys),
                [{"key_hash": h, "customer_id": new_id, "key_type": t} for t, h in moving],
            )
        gone = sorted({h for _, h in moving} - staying)
        if gone:
            conn.execute(delete(gs.keys).where(k.customer_id == cid, k.key_hash.in_(gone)))
        sid = (conn.execute(select(func.max(gs.splits.c.split_id))).scalar() or 0) + 1
        sides = [{"split_id": sid, "record_hash": h, "side": 1} for h in moved]
        sides += [{"split_id": sid, "record_hash": h, "side": 0} for h in kept]
        conn.execute(insert(gs.splits), sides)
        a, b = gs.links.c.a_ref, gs.links.c.b_ref
        one, other = [f"r:{h}" for h in moved], [f"r:{h}" for h in kept]
        conn.execute(
            delete(gs.links).where((a.in_(one) & b.in_(other)) | (a.in_(other) & b.in_(one)))
        )
    return {
        "customer_id": cid,
        "new_customer_id": new_id,
        "moved_records": len(moved),
        "kept_records": len(kept),
        "split_id": sid,
        "keys_moved": len(moving),
        "keys_left_both": len({h for _, h in moving} & staying),
    }
