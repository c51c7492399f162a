"""``limits.yaml``: what an outbound run may use (offer stock, channel capacity a day, a money
budget) and the period its prices hold. Validated against the catalogue at load, so a typo
fails with one line naming the field instead of a limit that silently binds nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from offers.catalog import CHANNELS, Catalog


class LimitsError(ValueError):
    """A bad limits file; the message is one line: ``limits.<field>: <reason>``."""


class OfferLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stock: int = Field(ge=0, description="units that may be given out")


class ChannelLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    capacity_per_day: int = Field(ge=0, description="messages a day (today's outbox counts)")


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    money: float = Field(ge=0, description="catalogue cost of the offers sent, at most")


class Period(BaseModel):
    """When the run's prices hold; without it, until the end of the run's (UTC) day."""

    model_config = ConfigDict(extra="forbid")
    valid_from: AwareDatetime
    valid_until: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> Period:
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    offers: dict[str, OfferLimit] = {}
    channels: dict[str, ChannelLimit] = {}
    budget: Budget | None = None
    period: Period | None = None


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(["limits", *(str(p) for p in loc)])


def parse_limits(text: str, catalog: Catalog) -> Limits:
    """Validate limits YAML; unknown offers and channels are refused by name."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise LimitsError(f"limits: invalid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LimitsError(f"limits: expected a mapping, got {type(data).__name__}")
    try:
        limits = Limits.model_validate(data)
    except ValidationError as exc:
        # a misspelt key explains the missing one beside it: name the misspelling
        err = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        reason = {
            "greater_than_equal": f"must be >= {err.get('ctx', {}).get('ge', 0):g}",
            "extra_forbidden": "unknown key",
        }.get(err["type"], err["msg"].removeprefix("Value error, "))
        got = err.get("input")
        tail = "" if isinstance(got, dict) or got is None else f", got {got!r}"
        raise LimitsError(f"{_where(err['loc'])}: {reason}{tail}") from None
    for oid in limits.offers:
        if oid not in catalog.ids:
            raise LimitsError(f"limits.offers.{oid}: unknown offer (catalogue: "
                              f"{', '.join(catalog.ids)})")  # fmt: skip
    for ch in limits.channels:
        if ch not in CHANNELS:
            raise LimitsError(f"limits.channels.{ch}: unknown channel ({', '.join(CHANNELS)})")
    return limits


def load_limits(path: str | Path, catalog: Catalog) -> Limits:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise LimitsError(f"limits: cannot read {p}: {exc.strerror}") from None
    return parse_limits(text, catalog)
