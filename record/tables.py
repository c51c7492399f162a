"""The decision record's tables and row types: what the ledger stores, one schema for SQLite
and PostgreSQL. ``record.ledger`` reads and writes them; serving, training and the reports
read the row types. Every column added after the first release is nullable, so
``nextbest.db.create_tables`` adds it to an older database on start.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
)
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from features.schema import CUSTOMER_ID_MAX
from record.ledger_pending import PlannedOn

metadata = MetaData()

decisions = Table(
    "decisions",
    metadata,
    Column("decision_id", String(36), primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=True),
    Column("channel", String(16), nullable=False),
    Column("context", JSON, nullable=False),
    Column("experiment", String(64), nullable=False),
    Column("arm", String(16), nullable=False),
    Column("offer_id", String(64), nullable=True),
    Column("propensity", Float, nullable=True),
    Column("probabilities", JSON, nullable=False),  # offer -> final probability, allowed set
    Column("scores", JSON, nullable=False),
    Column("model_versions", JSON, nullable=False),
    Column("fallback", Boolean, nullable=False, default=False),
    Column("reason", String(200), nullable=False, default=""),
    # delivery (DecisionStatus); nullable so older databases gain it: NULL there means shown
    Column("status", String(16), nullable=True),
    # every shown offer, [{offer_id, position, probability}]; NULL in rows from before slots
    Column("slots", JSON(none_as_null=True), nullable=True),
    Index("ix_decisions_customer_ts", "customer_id", "ts"),
    # covers the commit's grouped count of a customer's shows (record.ledger._SEEN_MANY):
    # read from the index alone, not the rows (2,000 decisions: 20.8 -> 3.0 us each); older
    # ledgers gain it at start-up (nextbest.db.create_tables)
    Index("ix_decisions_customer_shows", "customer_id", "ts", "offer_id", "status"),
    Index("ix_decisions_experiment", "experiment"),
    Index("ix_decisions_ts", "ts"),  # the online learner's window of matured decisions
)

outcomes = Table(
    "outcomes",
    metadata,
    Column("outcome_id", Integer, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(128), nullable=False, unique=True),
    Column("decision_id", String(36), nullable=True, index=True),
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=True, index=True),
    Column("type", String(16), nullable=False),
    Column("value", Float, nullable=False, default=1.0),
    Column("ts", DateTime(timezone=True), nullable=False),
    # the purchase's identity (the caller's, else attribution.order_key); NULL: not a purchase
    Column("order_id", String(128), nullable=True, index=True),
    Column("offer_id", String(64), nullable=True),  # the offer the outcome names, if any
)

outbox = Table(
    "outbox",
    metadata,
    Column("message_id", String(36), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=False, index=True),
    Column("channel", String(16), nullable=False),
    Column("decision_id", String(36), nullable=False),
    Column("offer_id", String(64), nullable=True),
    # abandoned_basket, or journey:<name>:<step> (names and step ids up to 40 characters)
    Column("trigger", String(96), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False, index=True),  # pending|sent|cancelled|delivered
)

baskets = Table(
    "baskets",
    metadata,
    Column("customer_id", String(CUSTOMER_ID_MAX), primary_key=True),
    Column("channel", String(16), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("products", JSON, nullable=False),
    Column("value", Float, nullable=False, default=0.0),
    Column("status", String(16), nullable=False, index=True),  # open|checked_out|triggered
)

# The dual price of each limit an outbound run solved under (``serving.outbound``): what one
# more unit of it was worth. /decide charges a show the prices of the limits it draws on while
# they hold (``record.prices.PriceBook``), so visits and runs spend the same stock and budget.
limit_prices = Table(
    "limit_prices",
    metadata,
    Column("run_id", String(36), nullable=False),
    Column("kind", String(32), nullable=False),  # offer_stock | channel_capacity | budget
    Column("key", String(64), nullable=False),  # the offer id, the channel, or "money"
    Column("price", Float, nullable=False),
    Column("valid_from", DateTime(timezone=True), nullable=False),
    Column("valid_until", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("run_id", "kind", "key"),
    Index("ix_limit_prices_until", "valid_until"),
)

# A person's first holdout draw per experiment ("global" is the global holdout's), keyed by
# every id they were drawn or looked up under; the earliest row of a person wins, for good.
assignments = Table(
    "assignments",
    metadata,
    Column("experiment", String(64), nullable=False),
    # a customer id or a salted identifier hash (32 characters)
    Column("unit_key", String(CUSTOMER_ID_MAX), nullable=False),
    Column("arm", String(16), nullable=False),
    Column("assigned_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("experiment", "unit_key"),
)

OutcomeType = Literal["click", "conversion", "revenue", "open"]  # open: of a message

# A decision's delivery: ``shown`` in the channel's own session (the default: /decide answers
# the channel that shows it), ``pending`` while its outbound message waits in the outbox,
# ``sent`` once a sender claimed it, ``delivered`` on the sender's receipt, ``cancelled`` when
# a purchase cancelled the message before it was sent. Pending and cancelled decisions reached
# nobody: attribution credits them nothing (record.attribution.UNDELIVERED) and contact
# caps do not count cancelled ones.
DecisionStatus = Literal["shown", "pending", "sent", "delivered", "cancelled"]


class Slot(TypedDict):
    """One shown offer: position 0 is the drawn one; ``probability`` is the chance that this
    offer was shown at this position."""

    offer_id: str
    position: int
    probability: float


class Show(NamedTuple):
    """One decision that showed something: its channel, every offer it showed, its time."""

    channel: str
    offers: tuple[str, ...]
    ts: datetime
    pending: str | None = None  # its decision id while it is planned, not committed


class History(NamedTuple):
    """A customer's shows in a window (committed, and planned by this process but not yet
    committed) and their last response: what caps and suppression need."""

    shows: list[Show]
    last_response: datetime | None

    def pending(self) -> tuple[str, ...]:
        """The decisions among ``shows`` not committed yet."""
        return tuple(s.pending for s in self.shows if s.pending is not None)


class DecisionRow(BaseModel):
    """One decision as the ledger stores it (the contract read by OPE and reports)."""

    decision_id: str
    ts: datetime
    customer_id: str | None
    channel: str
    context: dict[str, Any] = Field(default_factory=dict)
    experiment: str
    arm: Literal["treatment", "holdout"]
    offer_id: str | None
    propensity: float | None
    probabilities: dict[str, float] = Field(default_factory=dict)
    scores: dict[str, Any] = Field(default_factory=dict)
    model_versions: dict[str, str] = Field(default_factory=dict)
    fallback: bool = False
    reason: str = ""
    status: DecisionStatus = "shown"
    slots: list[Slot] = Field(default_factory=list, description="every offer shown, in order")
    # the history its plan counted, which the commit checks (not stored: see ledger_pending)
    planned_on: PlannedOn | None = Field(None, exclude=True)

    @field_validator("status", mode="before")
    @classmethod
    def _older_rows_were_shown(cls, v: Any) -> Any:
        return "shown" if v is None else v  # rows from before the column (NULL there)

    @field_validator("slots", mode="before")
    @classmethod
    def _no_slots(cls, v: Any) -> Any:
        return [] if v is None else v  # a row from before slots were logged

    def shown(self) -> tuple[str, ...]:
        """Every offer this decision showed, the drawn one first."""
        if self.slots:
            return tuple(s["offer_id"] for s in self.slots)
        return (self.offer_id,) if self.offer_id is not None else ()


class StoredArm(NamedTuple):
    """One recorded holdout draw: the arm and when it was first made."""

    unit_key: str
    arm: str
    assigned_at: datetime


class OutcomeRow(BaseModel):
    """One outcome; the idempotency key makes a retried report count once."""

    idempotency_key: str = Field(min_length=1, max_length=128)
    decision_id: str | None = None
    customer_id: str | None = None
    type: OutcomeType
    value: float = 1.0
    ts: datetime
    order_id: str | None = Field(None, max_length=128)
    offer_id: str | None = Field(None, max_length=64)


def too_long(table: Table, values: dict[str, Any]) -> tuple[str, int] | None:
    """The first of ``values``' strings longer than its column of ``table`` holds, and that
    length: why PostgreSQL refuses a row (SQLite stores it whatever its length)."""
    for col in table.columns:
        length = getattr(col.type, "length", None)
        value = values.get(col.key)
        if length is not None and isinstance(value, str) and len(value) > length:
            return col.key, length
    return None


def utc(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything in Nextbest is UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)


def insert_ignore(conn: Connection, table: Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the connection's dialect: a row whose key is
    there already is skipped, so concurrent writers of the same key need no error handling
    (an IntegrityError aborts a PostgreSQL transaction)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(table).on_conflict_do_nothing()
