"""Target groups: named YAML definitions of who is in an audience, as conditions that must all
hold, on profile fields (the ``profile_v2`` FeatureService's, segments and value tier included,
checked like offer eligibility rules), model scores (``churn_risk``) and recent events ("3 or more
``product_view`` of ``dev_*`` products in 7 days", "no ``purchase`` in 7 days").

Files live in ``<home>/audiences/NAME.yaml`` (the marketer's); shipped examples in
``serving/audience_examples``. A bad file fails with one line naming the file, the condition
and the field (``device_intent.yaml: conditions[1].op: ...``). A missing field, score or
event count never holds, as in eligibility: unknown is out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from journeys.definition import NAME, Channel, Duration, EventType, ScoreRule
from nextbest.settings import Settings
from offers.rules import COMPARE, Op, Rule

EXAMPLES = Path(__file__).resolve().parent / "audience_examples"
COUNT_OPS = ("==", "!=", "<", "<=", ">", ">=")


class TargetGroupError(ValueError):
    """A target group that cannot be used; the message is one line naming the culprit."""


class EventRule(BaseModel):
    """How often the customer did ``event`` (on ``channels``, of products starting with
    ``product``) in the ``within`` before now, compared with ``count``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event: EventType
    op: Op = ">="
    count: int = Field(ge=0)
    within: Duration
    product: str | None = Field(None, description="product_id prefix, e.g. dev_")
    channels: list[Channel] = Field(default_factory=list, description="empty: any channel")

    @model_validator(mode="after")
    def _check(self) -> EventRule:
        if self.op not in COUNT_OPS:
            raise ValueError(f"op {self.op} cannot compare an event count (use {COUNT_OPS})")
        if self.within <= timedelta(0):
            raise ValueError("within must be positive")
        return self

    def holds(self, counts: np.ndarray) -> np.ndarray:
        return np.asarray(COMPARE[self.op](counts, self.count), dtype=bool)


def _kind(v: Any) -> str | None:
    if isinstance(v, BaseModel):
        return {Rule: "field", ScoreRule: "score", EventRule: "event"}.get(type(v))
    if isinstance(v, Mapping):
        for key in ("field", "score", "event"):
            if key in v:
                return key
    return None


Condition = Annotated[
    Annotated[Rule, Tag("field")]
    | Annotated[ScoreRule, Tag("score")]
    | Annotated[EventRule, Tag("event")],
    Discriminator(
        _kind,
        custom_error_type="condition",
        custom_error_message="a condition names a field, a score or an event",
    ),
]


class TargetGroup(BaseModel):
    """Everyone for whom every condition holds; ``holdout_share`` of them are held out, sticky
    per person (``record.assignment``), and never exported."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME)
    description: str = ""
    conditions: list[Condition] = Field(min_length=1)
    holdout_share: float = Field(0.1, ge=0.0, lt=1.0)
    destinations: dict[Literal["google", "meta"], dict[str, str]] = Field(
        default_factory=dict,
        description="google: account_id, list_id; meta: audience_id (the sender's ids)",
    )

    @model_validator(mode="after")
    def _scores_compare(self) -> TargetGroup:
        for i, c in enumerate(self.conditions):
            if isinstance(c, ScoreRule) and c.op in ("in", "not_in"):
                raise ValueError(f"conditions[{i}].op: {c.op} cannot compare a score")
        return self

    @property
    def experiment(self) -> str:
        """The experiment its holdout and lift are recorded under."""
        return f"audience:{self.name}"

    def event_rules(self) -> list[EventRule]:
        return [c for c in self.conditions if isinstance(c, EventRule)]

    def reacts_to(self, event_type: str) -> bool:
        """Whether an event of this type can change someone's membership right away."""
        return any(r.event == event_type for r in self.event_rules())


def _one_line(exc: ValidationError) -> str:
    """The first error as ``loc: message`` (tags and pydantic's prefixes left out)."""
    err = exc.errors()[0]
    parts: list[str] = []
    after_index = False
    for p in err["loc"]:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]" if parts else f"[{p}]"]
        elif not (after_index and p in ("field", "score", "event")):  # the union's tag
            parts.append(str(p))
        after_index = isinstance(p, int)
    msg = err["msg"].removeprefix("Value error, ")
    return f"{'.'.join(parts)}: {msg}" if parts else msg


def parse_group(data: Any, source: str = "target group") -> TargetGroup:
    if not isinstance(data, Mapping):
        raise TargetGroupError(f"{source}: must be a mapping with name and conditions")
    try:
        return TargetGroup.model_validate(data)
    except ValidationError as exc:
        raise TargetGroupError(f"{source}: {_one_line(exc)}") from None


def load_group_file(path: Path) -> TargetGroup:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TargetGroupError(f"{path.name}: not YAML ({str(exc).splitlines()[0]})") from None
    group = parse_group(data, path.name)
    if group.name != path.stem:
        raise TargetGroupError(f"{path.name}: name {group.name!r} differs from the file name")
    return group


def groups_dir(settings: Settings) -> Path:
    return Path(settings.home) / "audiences"


def load_groups(settings: Settings) -> dict[str, TargetGroup]:
    """Every target group of ``<home>/audiences`` by name (a bad file raises)."""
    folder = groups_dir(settings)
    files = sorted(folder.glob("*.y*ml")) if folder.is_dir() else []
    return {g.name: g for g in map(load_group_file, files)}


def get_group(settings: Settings, name: str) -> TargetGroup:
    folder = groups_dir(settings)
    for ext in ("yaml", "yml"):
        if (folder / f"{name}.{ext}").is_file():
            return load_group_file(folder / f"{name}.{ext}")
    raise TargetGroupError(f"audience: no target group {name!r} ({folder}/{name}.yaml is missing)")


# --- evaluation ------------------------------------------------------------------------------


def count_events(events: pd.DataFrame, rules: Sequence[EventRule], as_of: datetime) -> pd.DataFrame:
    """Per customer (index), one column per rule: its events in ``(as_of - within, as_of]``."""
    out = pd.DataFrame(index=pd.Index(events["customer_id"].dropna().unique(), name="customer_id"))
    ts = pd.to_datetime(events["ts"], utc=True)
    for i, r in enumerate(rules):
        hit = (events["event_type"] == r.event) & (ts > as_of - r.within) & (ts <= as_of)
        if r.product:
            hit &= events["product_id"].fillna("").str.startswith(r.product)
        if r.channels:
            hit &= events["channel"].isin(r.channels)
        out[f"event_{i}"] = events.loc[hit].groupby("customer_id").size()
    return out.fillna(0).astype("int64")


def members_mask(group: TargetGroup, frame: pd.DataFrame) -> np.ndarray:
    """Whether each row (profile fields, score columns, ``event_<i>`` counts of the group's
    event rules in order) is in the group."""
    mask = np.ones(len(frame), dtype=bool)
    i = 0
    for c in group.conditions:
        if isinstance(c, Rule):
            mask &= c.mask(frame)
        elif isinstance(c, ScoreRule):
            col = frame[c.score] if c.score in frame else pd.Series(np.nan, index=frame.index)
            mask &= col.notna().to_numpy() & np.asarray(COMPARE[c.op](col, c.value), dtype=bool)
        else:
            name = f"event_{i}"
            counts = frame[name].fillna(0).to_numpy() if name in frame else np.zeros(len(frame))
            mask &= c.holds(counts)
            i += 1
    return mask


def is_member(
    group: TargetGroup,
    profile: Mapping[str, Any],
    scores: Mapping[str, float | None],
    counts: Sequence[int],
) -> bool:
    """:func:`members_mask` of one customer, without a frame (the per-event path)."""
    i = 0
    for c in group.conditions:
        if isinstance(c, Rule):
            ok = c.matches(profile)
        elif isinstance(c, ScoreRule):
            x = scores.get(c.score)
            ok = x is not None and x == x and bool(COMPARE[c.op](x, c.value))
        else:
            ok = bool(COMPARE[c.op](counts[i], c.count))
            i += 1
        if not ok:
            return False
    return True


def max_window(groups: Sequence[TargetGroup]) -> timedelta:
    """The longest event window of these groups (how far back one customer's events matter)."""
    return max((r.within for g in groups for r in g.event_rules()), default=timedelta(0))
