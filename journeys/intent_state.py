"""State of act-on-intent entries, on the ledger's metadata beside ``journeys.state`` (so
``nextbest.db.create_tables`` creates them and ``Ledger.erase`` deletes a person's rows):
the recent events that count towards ``count`` within ``within``, and the entries waiting
out ``idle``, which an ``unless`` event cancels (``serving.journey_intents``).
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Index, PrimaryKeyConstraint, String, Table

from features.schema import CUSTOMER_ID_MAX
from record.tables import metadata

journey_intent_events = Table(
    "journey_intent_events",
    metadata,
    Column("journey", String(40), nullable=False),
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("journey", "customer_id", "event_id"),
)

journey_pending_entries = Table(
    "journey_pending_entries",
    metadata,
    Column("journey", String(40), nullable=False),
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("context", JSON, nullable=False),  # the entry facts: event, product, channel
    PrimaryKeyConstraint("journey", "customer_id"),
    Index("ix_journey_pending_entries_due", "due_at"),
)
