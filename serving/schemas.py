"""The /decide request and response: the typed contract every channel codes against."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from features.schema import CUSTOMER_ID_MAX, ID_COLUMNS, IDENTIFIER_MAX, Channel

ID_FIELDS = ("customer_id", *ID_COLUMNS)
# A customer id is stored raw (features.schema.CUSTOMER_ID_MAX, the ledger's column); the
# other identifiers only hashed, so they may be longer.
CustomerId = Field(None, min_length=1, max_length=CUSTOMER_ID_MAX)
Id = Field(None, min_length=1, max_length=IDENTIFIER_MAX)


def field_error(field: str, reason: str, value: Any, title: str = "request") -> ValidationError:
    """A ValidationError for one field: the 400 that names it, like a malformed body's."""
    detail = InitErrorDetails(
        type=PydanticCustomError("invalid", reason), loc=(field,), input=value
    )
    return ValidationError.from_exception_data(title, [detail])


class VisitContext(BaseModel):
    """What the channel knows about this visit."""

    model_config = ConfigDict(extra="forbid")
    page: str | None = Field(None, max_length=256)
    # product ids, as long as an event's product_id (features.events)
    basket: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=100)
    intent: str | None = Field(None, max_length=64)
    campaign: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    journey: str | None = Field(
        None,
        max_length=81,
        pattern=r"^[a-z][a-z0-9_]{0,39}:[a-z][a-z0-9_]{0,39}$",
        description="the journey step this decision is for, as name:step (set by the journey "
        "runner for its messages, and for a journey's banner on a visit)",
    )


# One example shared by the OpenAPI schema, the unit, ASGI and real-server tests.
EXAMPLE_REQUEST: dict[str, Any] = {
    "email": "visitor@example.com",
    "channel": "web",
    "context": {"page": "home", "basket": ["data_10gb"], "intent": "browse"},
}


class DecideRequest(BaseModel):
    """One visit: any identifiers the channel has, the channel, the context."""

    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=True, json_schema_extra={"example": EXAMPLE_REQUEST}
    )
    customer_id: str | None = CustomerId
    email: str | None = Id
    phone: str | None = Id
    loyalty_id: str | None = Id
    login_id: str | None = Id
    cookie_id: str | None = Id
    channel: Channel
    context: VisitContext = Field(default_factory=VisitContext)
    max_offers: int = Field(1, ge=1, le=10)

    def identifiers(self) -> dict[str, str]:
        return {f: getattr(self, f) for f in ID_FIELDS if getattr(self, f)}


class RankedOffer(BaseModel):
    offer_id: str
    name: str = ""
    creative: dict[str, Any] = Field(default_factory=dict)
    score: float
    position: int = Field(description="its slot: 0 is the offer drawn, then the others by score")
    probability: float = Field(
        description="probability that this offer was shown in this position (at 0: that it "
        "was drawn, the logged propensity)"
    )
    reason: str


class DecideResponse(BaseModel):
    decision_id: str
    customer_id: str | None
    experiment: str
    arm: Literal["treatment", "holdout"]
    offers: list[RankedOffer]
    model_versions: dict[str, str]
    fallback: bool
    reasons: list[str] = Field(default_factory=list, description="why the decision fell back")


def batch_request(limit: int) -> type[BaseModel]:
    """The body of ``POST /decide/batch`` with at most ``limit`` requests
    (``max_batch_decisions``): the count is checked before any item is validated."""

    class DecideBatch(BaseModel):
        """Decision requests answered in one call, in order (an outbound run, a call list)."""

        model_config = ConfigDict(
            extra="forbid", json_schema_extra={"example": {"requests": [EXAMPLE_REQUEST]}}
        )
        requests: list[DecideRequest] = Field(
            max_length=limit, description=f"at most {limit} decision requests"
        )

        @field_validator("requests", mode="before")
        @classmethod
        def _at_most(cls, value: Any) -> Any:
            if isinstance(value, list) and len(value) > limit:
                reason = f"at most {limit} decision requests, got {len(value)}"
                raise PydanticCustomError("too_long", reason)
            return value

    return DecideBatch
