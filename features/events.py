"""The typed schema of one channel event: the boundary every event crosses before it counts.

Channel and event-type names come from ``features.schema`` (the one source of those names), so
the simulated world and the live path cannot drift apart. A malformed event is rejected with
:class:`InvalidEvent`, whose message names the field and the reason.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from features.schema import CHANNELS, EVENT_TYPES, ID_COLUMNS

IDENTIFIER_FIELDS = ("customer_id", *ID_COLUMNS)
BASKET_TYPES = ("basket_add", "basket_remove")
BASKET_CLEARING_TYPES = ("checkout", "purchase")
VISIT_TYPES = ("session_start", "store_visit", "call_contact")
# Sent by live channels only (no simulated history has them): a store clerk or an agent
# records what the customer wants, with its product_id.
LIVE_ONLY_TYPES = ("purchase_intent",)
# Channels a visit can happen on, and channels a customer can opt in or out of; the feature
# views and the aggregates both build their column names from these tuples.
VISIT_CHANNELS = ("web", "app", "store", "call_centre")
CONSENT_CHANNELS = ("email", "sms", "app", "call_centre", "paid_media")  # paid_media: ads
# Bounds every event crosses (issue 15 items 3 and 6): a time any store can hold (pandas,
# Parquet, DuckDB and both ledgers), a quantity a basket can hold, and ids no longer than the
# columns and keys they end up in (the ledger's customer_id and offer columns hold 64).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
MAX_QUANTITY = 10_000
NAIVE_TIME = "must carry a timezone (ISO 8601 with an offset, e.g. Z)"


def bounded_time(v: datetime) -> datetime:
    """A caller's time, refused when naive (ambiguous across regions: guessing would shift
    every window) or outside [EARLIEST, LATEST) in UTC (year 1 at +14:00 is not even a UTC
    time); shared by events and outcomes so both routes follow one rule."""
    if v.tzinfo is None or v.utcoffset() is None:
        raise _invalid(NAIVE_TIME)
    try:
        at = v.astimezone(UTC)
    except OverflowError:
        at = None
    if at is None or not EARLIEST <= at < LATEST:
        raise _invalid(f"must fall between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)")
    return v


def finite_amount(v: float | None) -> float | None:
    """A money amount: a finite number >= 0 (JSON's 1e400 and the string "Infinity" parse to
    inf; NaN fails every comparison)."""
    if v is not None and not (math.isfinite(v) and v >= 0):
        raise _invalid(f"must be a finite number >= 0, got {v}")
    return v


def _invalid(reason: str) -> PydanticCustomError:
    """The reason alone as the error's message (a ValueError's would read "Value error, ...")
    in every model that shares these checks, whoever turns it into a 400."""
    return PydanticCustomError("invalid", reason)


class InvalidEvent(ValueError):
    """An event that does not fit the schema; ``str(err)`` is ``"<field>: <reason>"``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Event(BaseModel):
    """One event from any channel. Identifiers are whatever the channel knows (at least one)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    ts: datetime
    channel: str = Field(max_length=32)
    event_type: str = Field(max_length=32)
    customer_id: str | None = Field(None, max_length=64)
    email: str | None = Field(None, max_length=256)
    phone: str | None = Field(None, max_length=256)
    loyalty_id: str | None = Field(None, max_length=256)
    login_id: str | None = Field(None, max_length=256)
    cookie_id: str | None = Field(None, max_length=256)
    product_id: str | None = Field(None, min_length=1, max_length=64)
    value: float | None = None
    quantity: int | None = Field(None, ge=1, le=MAX_QUANTITY)
    # a purchase's order: the same order reported again (another event, a POST /outcome
    # conversion) counts once; without it the ledger keys the order by customer, product,
    # amount and minute
    order_id: str | None = Field(None, min_length=1, max_length=128)
    campaign_id: str | None = Field(None, max_length=64)
    consent_channel: str | None = Field(None, max_length=32)
    consent_value: bool | None = None

    @field_validator("ts")
    @classmethod
    def _bounded_time(cls, v: datetime) -> datetime:
        return bounded_time(v)

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, v: str) -> str:
        if v not in CHANNELS:
            raise ValueError(f"unknown channel {v!r} (expected one of {', '.join(CHANNELS)})")
        return v

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in EVENT_TYPES and v not in LIVE_ONLY_TYPES:
            raise ValueError(f"event_type {v!r} is not in the schema")
        return v

    @field_validator("consent_channel")
    @classmethod
    def _consent_channel(cls, v: str | None) -> str | None:
        if v is not None and v not in CHANNELS:
            raise ValueError(f"unknown channel {v!r} (expected one of {', '.join(CHANNELS)})")
        return v

    @field_validator("value")
    @classmethod
    def _finite_value(cls, v: float | None) -> float | None:
        return finite_amount(v)

    @field_validator(*IDENTIFIER_FIELDS)
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v or None

    @model_validator(mode="after")
    def _consistent(self) -> Event:
        if not any(getattr(self, f) for f in IDENTIFIER_FIELDS):
            raise InvalidEvent(
                "identifiers",
                "no identifier at all (give one of " + ", ".join(IDENTIFIER_FIELDS) + ")",
            )
        if self.event_type == "consent_change":
            if self.consent_channel is None:
                raise InvalidEvent("consent_channel", "required for a consent_change event")
            if self.consent_value is None:
                raise InvalidEvent("consent_value", "required for a consent_change event")
        if self.event_type == "purchase_intent" and self.product_id is None:
            raise InvalidEvent("product_id", "required for a purchase_intent event")
        if self.event_type in BASKET_TYPES and self.value is None:
            raise InvalidEvent("value", f"required for a {self.event_type} event")
        return self

    def identifier_dict(self) -> dict[str, str]:
        """The identifiers this event carries, for the identity graph."""
        return {f: getattr(self, f) for f in IDENTIFIER_FIELDS if getattr(self, f)}


def parse_event(data: dict[str, Any] | Event) -> Event:
    """Validate raw input into an :class:`Event`, raising :class:`InvalidEvent` on the first
    problem so callers (CLI, HTTP) can report exactly one field and reason."""
    if isinstance(data, Event):
        return data
    try:
        return Event.model_validate(data)
    except InvalidEvent:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "event"
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, InvalidEvent):
            raise ctx_err from None
        reason = str(ctx_err) if err["type"] == "value_error" else err["msg"]
        if err["type"] == "extra_forbidden":
            reason = "unknown field"
        elif err["type"] == "missing":
            reason = "required"
        raise InvalidEvent(field, reason) from None
