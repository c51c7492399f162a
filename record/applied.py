"""Which of an event's effects on the ledger are applied: one row per event and sink (the live
basket, journeys, intent entries), so a client's retry of an event changes nothing that its
first copy changed, and completes what a failure left undone.

A sink applied in one transaction writes its mark in that transaction (``claim``): the mark
and the effect commit together or not at all. A sink of several transactions (journeys) is
applied, then marked (``mark``): a crash in between re-applies it on the retry, which its
own rules make harmless (an ended instance is not ended twice, a goal is marked once).
The rows name the customer, so ``Ledger.erase`` deletes an erased person's marks with them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    PrimaryKeyConstraint,
    String,
    Table,
    select,
)

from features.schema import CUSTOMER_ID_MAX
from record.tables import insert_ignore, metadata

applied_events = Table(
    "applied_events",
    metadata,
    # an event's id (up to the API's length), or the stored key of a caller's outcome
    Column("event_id", String(300), nullable=False),
    Column("sink", String(16), nullable=False),  # basket | journeys | intents | outcome_journeys
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("event_id", "sink"),
)


def claim(conn: Connection, event_id: str, sink: str, customer_id: str, at: datetime) -> bool:
    """Mark the sink applied in the caller's transaction, which then applies it; False when it
    already was (the caller applies nothing). On PostgreSQL a concurrent claim of the same
    event waits for this transaction and then finds the mark."""
    row = {"event_id": event_id, "sink": sink, "customer_id": customer_id, "applied_at": at}
    # RETURNING: psycopg reports no rowcount for an INSERT ... ON CONFLICT DO NOTHING
    inserted = insert_ignore(conn, applied_events).returning(applied_events.c.event_id)
    return conn.execute(inserted, row).first() is not None


def applied(engine: Engine, event_id: str, sink: str) -> bool:
    """Whether the sink was applied for this event (marked after it was)."""
    c = applied_events.c
    with engine.connect() as conn:
        q = select(c.event_id).where(c.event_id == event_id, c.sink == sink)
        return conn.execute(q).first() is not None


def mark(engine: Engine, event_id: str, sink: str, customer_id: str, at: datetime) -> None:
    """Record that the sink was applied (after it was, for a sink of several transactions)."""
    with engine.begin() as conn:
        claim(conn, event_id, sink, customer_id, at)
