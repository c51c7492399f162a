"""Journey state in the ledger's database, on the ledger's metadata, so a message, its
decision and the state change that sends it commit in one transaction (a transactional
outbox), and ``nextbest.db.create_tables`` creates these with the ledger's own tables.

An instance is one customer's pass through one version of a journey. Holdout customers get an
instance too (arm ``holdout``, status ``holdout``: "would have entered"), so their goal is
tracked over the same window. The runner claims instances whose ``due_at`` has come; events
reach a waiting instance through ``journey_waits`` (indexed by customer and event type), not by
polling every instance.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    text,
)

from features.schema import CUSTOMER_ID_MAX
from record.tables import metadata

# active: on a step (running or waiting); paused: an agent paused it (no step runs, exits and
# the goal still apply); holdout: would have entered, gets nothing; the rest are ended.
InstanceStatus = Literal["active", "paused", "holdout", "completed", "exited", "goal", "ended"]
LIVE = ("active", "paused")  # at most one live instance per customer per journey
Arm = Literal["treatment", "holdout"]

journey_versions = Table(
    "journey_versions",
    metadata,
    Column("journey", String(40), nullable=False),
    Column("version", String(12), nullable=False),  # Journey.version, a content hash
    Column("definition", JSON, nullable=False),  # Journey.model_dump(mode="json")
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("journey", "version"),
)

journey_instances = Table(
    "journey_instances",
    metadata,
    Column("instance_id", String(36), primary_key=True),
    Column("journey", String(40), nullable=False),
    Column("version", String(12), nullable=False),
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=False),
    Column("arm", String(16), nullable=False),  # Arm
    Column("path", String(40), nullable=True),  # the random_split branch taken, if any
    Column("status", String(16), nullable=False),  # InstanceStatus
    Column("step_id", String(40), nullable=True),  # the step it is on (None: not started)
    Column("step_seq", Integer, nullable=False, default=0),  # steps taken; keys each message
    Column("due_at", DateTime(timezone=True), nullable=True),  # when the runner takes it next
    Column("entered_at", DateTime(timezone=True), nullable=False),
    Column("goal_at", DateTime(timezone=True), nullable=True),  # goal event within the window
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("end_reason", String(200), nullable=True),
    Column("context", JSON, nullable=False),  # entry facts: event, product, channel, basket
    Column("claimed_until", DateTime(timezone=True), nullable=True),  # a runner's lease
    Index("ix_journey_instances_due", "status", "due_at"),
    Index("ix_journey_instances_customer", "customer_id", "journey"),
    # one live instance per customer per journey, enforced by the database itself
    Index(
        "ux_journey_instances_live",
        "journey",
        "customer_id",
        unique=True,
        sqlite_where=text("status IN ('active', 'paused')"),
        postgresql_where=text("status IN ('active', 'paused')"),
    ),
)

# What a waiting instance waits for: an event type of a customer (about one message, if
# ``message_id`` is set). The ingest path looks here by (customer_id, event_type).
journey_waits = Table(
    "journey_waits",
    metadata,
    Column("instance_id", String(36), nullable=False),
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("message_id", String(36), nullable=True),
    Column("decision_id", String(36), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("instance_id", "event_type"),
    Index("ix_journey_waits_customer", "customer_id", "event_type"),
)

# Every step an instance took, in order: what the funnel and the agent's view read. A message
# step's row names its decision and message (outbox status tells delivered; outcomes tell
# opened and clicked).
journey_steps = Table(
    "journey_steps",
    metadata,
    Column("instance_id", String(36), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("step_id", String(40), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    # sent | banner | skipped (no consent, capped, no offer) | waited | event | timeout |
    # branch | exit
    Column("result", String(16), nullable=False),
    Column("channel", String(16), nullable=True),
    Column("decision_id", String(36), nullable=True),
    Column("message_id", String(36), nullable=True),
    Column("detail", String(200), nullable=True),
    PrimaryKeyConstraint("instance_id", "seq"),
)
