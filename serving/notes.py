"""What an agent or a clerk wrote down: the note of a purchase intent, and the answers to an
offer that are no ledger outcome (declined, call me back).

An acceptance is a conversion through ``/outcome`` and an intent a ``purchase_intent`` event
through ``/events``, so every channel sees them; this table keeps only the words around them
and the answers the ledger has no outcome type for (a decline is the absence of a conversion
to the reward; a callback is a request for a contact), so the next agent sees them. It lives
in the ledger's database and is erased with the person (``serving.erasure``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    inspect,
    select,
)

from nextbest.db import create_tables
from record.tables import utc

metadata = MetaData()
console_notes = Table(
    "console_notes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("customer_id", String(64), nullable=False, index=True),
    Column("user", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # intent | declined | callback
    Column("decision_id", String(36)),
    Column("offer_id", String(64)),
    Column("text", String(500), nullable=False, default=""),
)
NoteKind = Literal["intent", "declined", "callback"]
_ready: set[int] = set()


class Note(BaseModel):
    ts: datetime
    user: str
    kind: NoteKind
    offer_id: str | None
    text: str


def _tables(engine: Engine) -> None:
    if id(engine) not in _ready:
        create_tables(engine, metadata)
        _ready.add(id(engine))


def add(
    engine: Engine,
    customer_id: str,
    user: str,
    kind: NoteKind,
    at: datetime,
    text: str = "",
    decision_id: str | None = None,
    offer_id: str | None = None,
) -> None:
    _tables(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(console_notes).values(
                ts=utc(at),
                customer_id=customer_id,
                user=user,
                kind=kind,
                text=text[:500],
                decision_id=decision_id,
                offer_id=offer_id,
            )
        )


def of(engine: Engine, ids: list[str], limit: int = 10) -> list[Note]:
    """The latest notes on these customer ids, newest first."""
    _tables(engine)
    c = console_notes.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.ts, c.user, c.kind, c.offer_id, c.text)
            .where(c.customer_id.in_(ids))
            .order_by(c.ts.desc())
            .limit(limit)
        ).all()
    return [
        Note(ts=utc(r.ts), user=r.user, kind=r.kind, offer_id=r.offer_id, text=r.text) for r in rows
    ]


def answers(engine: Engine, decision_id: str) -> dict[str, str]:
    """offer id -> the answer (declined, callback) noted on this decision's offers."""
    _tables(engine)
    c = console_notes.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.offer_id, c.kind).where(c.decision_id == decision_id).order_by(c.ts)
        ).all()
    return {r.offer_id: r.kind for r in rows if r.offer_id}


def erase(engine: Engine, ids: list[str]) -> int:
    """Right to erasure: every note on these customer ids; rows deleted. A home whose console
    never wrote a note has no table, and none is created here (a full disk refuses that)."""
    with engine.begin() as conn:
        if not inspect(conn).has_table(console_notes.name):
            return 0
        return conn.execute(
            delete(console_notes).where(console_notes.c.customer_id.in_(ids))
        ).rowcount
