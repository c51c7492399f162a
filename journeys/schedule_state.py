"""State of scheduled entries (lifecycle, calendar, predictive, behavioural), on the ledger's
metadata beside ``journeys.state`` (so ``nextbest.db.create_tables`` creates them and
``Ledger.erase`` deletes a person's rows): how far each journey has been swept, and for a
predictive journey the score each customer had at the last evaluation, so a crossing upwards
is told from a score that stays above (``serving.journey_schedule``).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Float, PrimaryKeyConstraint, String, Table

from features.schema import CUSTOMER_ID_MAX
from record.tables import metadata

SWEEP_CLOCK = "*sweep*"  # the row of the last sweep's start (no journey name has a '*')

journey_schedule = Table(
    "journey_schedule",
    metadata,
    Column("journey", String(40), nullable=False),
    # entries due up to here are done: the next sweep covers (swept_until, now]
    Column("swept_until", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("journey"),
)

journey_schedule_scores = Table(
    "journey_schedule_scores",
    metadata,
    Column("journey", String(40), nullable=False),
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),  # the scored feature row's time
    Column("score", Float, nullable=False),
    PrimaryKeyConstraint("journey", "customer_id"),
)
