"""The offer catalogue: one YAML file read by the decision service and the simulator.

Validated at load so a bad catalogue fails at start-up with the file line and the reason,
never at decision time. Eligibility is the rule language of :mod:`offers.rules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from offers.rules import Rule

DEFAULT_PATH = Path(__file__).resolve().parent / "offers.yaml"
NO_OFFER = "no_offer"
CHANNELS = ("web", "app", "email", "sms", "call_centre", "store", "paid_media")


class CatalogError(ValueError):
    """An invalid catalogue; the message names the file line, the field and the reason."""


class Caps(BaseModel):
    """Frequency caps per customer."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_shows: int = Field(gt=0)
    period_days: int = Field(gt=0)
    suppress_after_ignored: int = Field(gt=0)


class Offer(BaseModel):
    """One offer: creative, economics, where it may be shown and to whom."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str = Field(min_length=1)
    headline: str
    body: str
    cta: str
    product_id: str | None
    value: float = Field(ge=0, description="margin earned on conversion")
    cost: float = Field(ge=0, description="what a conversion gives away (discount, subsidy)")
    purpose: Literal["marketing", "service"]
    channels: list[Literal[CHANNELS]] = Field(min_length=1)  # type: ignore[valid-type]
    eligibility: list[Rule] = []
    valid_from: AwareDatetime
    valid_to: AwareDatetime
    caps: Caps

    @model_validator(mode="after")
    def _check(self) -> Offer:
        if self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be after valid_from")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels are repeated")
        if self.id == NO_OFFER:
            if self.product_id is not None or self.value or self.cost:
                raise ValueError("no_offer sells nothing: product_id null, value 0 and cost 0")
        elif not self.product_id:
            raise ValueError("product_id is required (only no_offer sells nothing)")
        return self

    def is_valid_at(self, at: datetime) -> bool:
        return self.valid_from <= at <= self.valid_to

    def is_eligible(self, profile: Mapping[str, Any]) -> bool:
        """All rules hold for this profile."""
        return all(rule.matches(profile) for rule in self.eligibility)

    def eligible_mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Vectorised ``is_eligible`` over a frame of profiles."""
        mask = np.ones(len(frame), dtype=bool)
        for rule in self.eligibility:
            mask &= rule.mask(frame)
        return mask


class Catalog(BaseModel):
    """The whole catalogue; offer ids are unique and ``no_offer`` is always present."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = Field(ge=1)
    offers: list[Offer] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Catalog:
        seen: set[str] = set()
        for offer in self.offers:
            if offer.id in seen:
                raise ValueError(f"offer id {offer.id!r} is repeated")
            seen.add(offer.id)
        if NO_OFFER not in seen:
            raise ValueError("the catalogue needs a 'no_offer' entry (the control action)")
        products = [o.product_id for o in self.offers if o.product_id]
        if len(set(products)) != len(products):
            raise ValueError("two offers sell the same product_id")
        return self

    @property
    def ids(self) -> list[str]:
        return [o.id for o in self.offers]

    def get(self, offer_id: str) -> Offer:
        for offer in self.offers:
            if offer.id == offer_id:
                return offer
        raise KeyError(f"unknown offer_id {offer_id!r}")

    def by_product(self) -> dict[str, Offer]:
        return {o.product_id: o for o in self.offers if o.product_id}

    def eligible(self, profile: Mapping[str, Any], channel: str, at: datetime) -> list[Offer]:
        """Offers allowed on this channel, valid at this time and whose rules hold."""
        return [
            o
            for o in self.offers
            if channel in o.channels and o.is_valid_at(at) and o.is_eligible(profile)
        ]


def _node_at(root: yaml.Node, loc: tuple[int | str, ...]) -> yaml.Node:
    """The deepest YAML node along a pydantic error location (for its line number)."""
    node = root
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            nxt = node.value[key] if key < len(node.value) else None
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
    return node


def _duplicate_key(node: yaml.Node) -> tuple[int, str] | None:
    """PyYAML silently keeps the last of repeated keys; a catalogue must not."""
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for k, v in node.value:
            if k.value in keys:
                return k.start_mark.line + 1, f"duplicate key {k.value!r}"
            keys.add(k.value)
            found = _duplicate_key(v)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            found = _duplicate_key(v)
            if found:
                return found
    return None


def _duplicate_id(root: yaml.Node) -> tuple[int, str] | None:
    """A repeated offer id, reported at the second occurrence."""
    offers = _node_at(root, ("offers",))
    if not isinstance(offers, yaml.SequenceNode):
        return None
    seen: set[str] = set()
    for i, item in enumerate(offers.value):
        node = _node_at(item, ("id",))
        if isinstance(node, yaml.ScalarNode) and node is not item:
            if node.value in seen:
                return (
                    node.start_mark.line + 1,
                    f"offers[{i}].id: offer id {node.value!r} is repeated",
                )
            seen.add(node.value)
    return None


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "catalogue"


def parse_catalog(text: str, source: str = "<string>") -> Catalog:
    """Parse and validate catalogue YAML; errors read ``source:line: field: reason``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise CatalogError(f"{source}:{line}: invalid YAML: {problem}") from exc
    if root is None or not isinstance(data, dict):
        raise CatalogError(f"{source}:1: catalogue: expected a mapping with 'version' and 'offers'")
    dup = _duplicate_key(root) or _duplicate_id(root)
    if dup:
        raise CatalogError(f"{source}:{dup[0]}: {dup[1]}")
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        line = _node_at(root, loc).start_mark.line + 1
        reason = err["msg"].removeprefix("Value error, ")
        raise CatalogError(f"{source}:{line}: {_where(loc)}: {reason}") from None


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load the catalogue (default ``offers/offers.yaml``); raise ``CatalogError`` if invalid."""
    p = Path(path) if path is not None else DEFAULT_PATH
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{p}: cannot read catalogue: {exc.strerror}") from exc
    return parse_catalog(text, source=str(p))
