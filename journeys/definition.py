"""What a marketer writes: one journey per YAML file, validated here before anything runs.

A journey is an entry trigger, a goal, exit rules, rules (holdout, re-entry, quiet hours) and
a list of steps; the first step is where an entered customer starts. Steps name their
successors by id, so the file reads top to bottom like the dialog it describes. The models are
strict (unknown keys are errors) because a typo in a live journey is a message sent wrongly.
Cross-checks that need the offer catalogue or the profile's fields live in
``journeys.validate``; this module checks the shape and the step graph.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from features.schema import EVENT_TYPES, Channel
from offers.rules import Op, Rule

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
OUTBOUND_CHANNELS = ("email", "sms", "call_centre", "paid_media")  # land in the outbox
BANNER_CHANNELS = ("web", "app")  # shown by /decide on the customer's next visit
NAME = r"^[a-z][a-z0-9_]{0,39}$"

_DURATION = re.compile(r"^(-?)(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(v: Any) -> Any:
    """``15m``, ``1h``, ``30d``, ``2w`` (``-60d`` for an offset before a date) -> timedelta;
    ``30s`` too, for tests and demos that cannot wait an hour."""
    if isinstance(v, timedelta):
        return v
    if not isinstance(v, str) or not (m := _DURATION.match(v.strip())):
        raise ValueError(f"expected a duration like 15m, 1h, 30d or 2w, got {v!r}")
    sign = -1 if m.group(1) else 1
    return sign * timedelta(**{_UNITS[m.group(3)]: int(m.group(2))})


def format_duration(d: timedelta) -> str:
    """The shortest exact spelling of ``d`` in the file's own units."""
    seconds = int(d.total_seconds())
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _DURATION.pattern}),
]
StepId = Annotated[str, Field(pattern=NAME)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- entry triggers ---------------------------------------------------------------------------
class IntentTrigger(Strict):
    """Act on intent: ``count`` events of ``event`` (on ``channels``) within ``within``; with
    ``idle``, the customer enters only if none of ``unless`` follows for that long (a basket
    not checked out for 60 minutes)."""

    type: Literal["intent"]
    event: EventType
    channels: list[Channel] = Field(default_factory=list, description="empty: any channel")
    count: int = Field(1, ge=1)
    within: Duration | None = None
    idle: Duration | None = None
    unless: list[EventType] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> IntentTrigger:
        if self.count > 1 and self.within is None:
            raise ValueError("within: required when count is more than 1")
        if self.unless and self.idle is None:
            raise ValueError("idle: required with unless (how long the customer must not act)")
        return self


class BehaviouralTrigger(Strict):
    """A change against the customer's own baseline: ``frequency_drop`` (the rate of ``event``
    over the last ``window`` fell by at least ``drop`` against the ``window`` before it),
    ``new_category`` (a first purchase of a product never bought before), ``new_store`` (a first
    visit to a store never visited before)."""

    type: Literal["behavioural"]
    change: Literal["frequency_drop", "new_category", "new_store"]
    event: EventType = "purchase"
    drop: float = Field(0.5, gt=0, lt=1)
    window: Duration = timedelta(days=60)


class PredictiveTrigger(Strict):
    """A model score crossing ``above`` upwards, evaluated when the customer's features refresh."""

    type: Literal["predictive"]
    score: Literal["churn_risk"]
    above: float = Field(gt=0, lt=1)


class LifecycleTrigger(Strict):
    """``after`` the anchor date (sign-up: day 0)."""

    type: Literal["lifecycle"]
    anchor: Literal["sign_up", "contract_renewal"]
    after: Duration = timedelta(0)


class CalendarTrigger(Strict):
    """A date field plus an offset (contract end minus 60 days), or a date: ``YYYY-MM-DD``
    once, ``MM-DD`` every year; the customer enters at local time ``at``."""

    type: Literal["calendar"]
    field: Literal["contract_end"] | None = None
    offset: Duration = timedelta(0)
    date: str | None = Field(None, pattern=r"^(\d{4}-)?\d{2}-\d{2}$")
    at: time = time(9, 0)

    @model_validator(mode="after")
    def _check(self) -> CalendarTrigger:
        if (self.field is None) == (self.date is None):
            raise ValueError("give exactly one of field and date")
        return self


class AudienceTrigger(Strict):
    """Joining a target group (``<home>/audiences/NAME.yaml``): on the event that brings the
    customer in, or at the group's batch rebuild (``serving.audiences``)."""

    type: Literal["audience"]
    audience: str = Field(pattern=NAME)


Trigger = Annotated[
    IntentTrigger
    | BehaviouralTrigger
    | PredictiveTrigger
    | LifecycleTrigger
    | CalendarTrigger
    | AudienceTrigger,
    Field(discriminator="type"),
]


# --- goal, exits, rules -----------------------------------------------------------------------
Product = Annotated[
    str,
    Field(
        description="'any'; 'entry': the product of the entry event (the basket's); or an "
        "offer id: that offer's product",
        pattern=NAME,
    ),
]


class Goal(Strict):
    """What the journey is for; its lift is measured on this, within ``within`` of entry."""

    event: EventType = "purchase"
    product: Product = "any"
    within: Duration = timedelta(days=30)


class ExitRule(Strict):
    """An event that ends the instance at once, whatever step it is on (waits included)."""

    event: EventType
    product: Product = "any"


class QuietHours(Strict):
    """No message on the channel from ``start`` to ``end`` local time (may wrap midnight)."""

    start: time
    end: time

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = re.fullmatch(r"(\d{2}:\d{2})-(\d{2}:\d{2})", v.strip())
            if not m:
                raise ValueError(f"expected HH:MM-HH:MM, got {v!r}")
            return {"start": m.group(1), "end": m.group(2)}
        return v

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        """Files write ``"21:00-08:00"``; editors must accept that spelling too."""
        text = {"type": "string", "pattern": r"^\d{2}:\d{2}-\d{2}:\d{2}$"}
        return {"anyOf": [text, handler(core_schema)]}

    def covers(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


class Rules(Strict):
    holdout_share: float = Field(0.1, ge=0, lt=1, description="held out at entry, sticky")
    reentry_after: Duration = Field(timedelta(days=30), description="cool-down after an end")
    quiet_hours: dict[Channel, QuietHours] = Field(default_factory=dict)
    timezone: str = "Europe/London"
    exit_on_goal: bool = True

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# --- steps ------------------------------------------------------------------------------------
class ScoreRule(Strict):
    """A condition on a model score (``churn_risk``), beside profile-field rules."""

    score: Literal["churn_risk"]
    op: Op
    value: float


Condition = ScoreRule | Rule


class MessageStep(Strict):
    """One contact: the offer (among the journey's) and creative decided by the /decide
    pipeline, on ``channel``, or on ``best_channel``: the consented channel among ``channels``
    with the most expected incremental value now. Web/app messages are banners shown on the
    customer's next visit; the others land in the outbox."""

    id: StepId
    type: Literal["message"]
    channel: Channel | Literal["best_channel"]
    channels: list[Channel] = Field(default_factory=list, description="best_channel's options")
    next: StepId | None = Field(None, description="None: the journey ends after this step")

    @model_validator(mode="after")
    def _check(self) -> MessageStep:
        if self.channels and self.channel != "best_channel":
            raise ValueError("channels: only for channel best_channel")
        return self


class WaitStep(Strict):
    """Wait ``duration``, or until local time ``until`` (pushed out of quiet hours)."""

    id: StepId
    type: Literal["wait"]
    duration: Duration | None = None
    until: time | None = None
    next: StepId

    @model_validator(mode="after")
    def _check(self) -> WaitStep:
        if (self.duration is None) == (self.until is None):
            raise ValueError("give exactly one of duration and until")
        if self.duration is not None and self.duration <= timedelta(0):
            raise ValueError("duration: must be positive")
        return self


class WaitForStep(Strict):
    """Wait for ``event`` keyed to this instance (about the message of step ``of``, when
    given, else any such event of the customer), at most ``timeout``."""

    id: StepId
    type: Literal["wait_for"]
    event: EventType
    of: StepId | None = None
    timeout: Duration
    on_event: StepId
    on_timeout: StepId


class SplitBranch(Strict):
    when: list[Condition] = Field(min_length=1, description="all must hold")
    next: StepId


class SplitStep(Strict):
    """The first branch whose conditions all hold, else ``otherwise``."""

    id: StepId
    type: Literal["split"]
    branches: list[SplitBranch] = Field(min_length=1)
    otherwise: StepId


class PathBranch(Strict):
    name: StepId
    share: float = Field(gt=0, le=1)
    next: StepId


class RandomSplitStep(Strict):
    """A path experiment: each entered customer takes one branch with its share, for good."""

    id: StepId
    type: Literal["random_split"]
    branches: list[PathBranch] = Field(min_length=2)


class ExitStep(Strict):
    id: StepId
    type: Literal["exit"]


Step = Annotated[
    MessageStep | WaitStep | WaitForStep | SplitStep | RandomSplitStep | ExitStep,
    Field(discriminator="type"),
]


def successors(step: Any) -> list[str]:
    """The step ids a step may go on to."""
    if isinstance(step, MessageStep):
        return [step.next] if step.next else []
    if isinstance(step, WaitStep):
        return [step.next]
    if isinstance(step, WaitForStep):
        return [step.on_event, step.on_timeout]
    if isinstance(step, SplitStep):
        return [b.next for b in step.branches] + [step.otherwise]
    if isinstance(step, RandomSplitStep):
        return [b.next for b in step.branches]
    return []


class Journey(Strict):
    """One always-on dialog. ``version`` changes with any edit; running instances finish on
    the version they entered."""

    name: str = Field(pattern=NAME)
    description: str = ""
    offers: list[str] = Field(min_length=1, description="catalogue offers its messages may carry")
    entry: Trigger
    goal: Goal = Field(default_factory=Goal)
    exit: list[ExitRule] = Field(default_factory=list)
    rules: Rules = Field(default_factory=Rules)
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _graph(self) -> Journey:
        """Step ids unique, every successor defined, every step reachable, every cycle waits,
        path shares sum to 1: a journey that could spin or strand a customer never loads."""
        problems = graph_problems(self.steps)
        if problems:
            loc, reason = problems[0]
            raise ValueError(f"{where(loc, [s.id for s in self.steps])}: {reason}")
        return self

    @property
    def first(self) -> Any:
        return self.steps[0]

    def step(self, step_id: str) -> Any:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(f"journey {self.name}: no step {step_id!r}")

    @property
    def version(self) -> str:
        """A content hash: the same definition is the same version on every machine."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def experiment(self) -> str:
        """The holdout's experiment name in the assignments table (sticky per person)."""
        return f"journey:{self.name}"


Loc = tuple[str | int, ...]


def where(loc: Loc, step_ids: list[str | None]) -> str:
    """A location as a marketer reads it: ``steps[3] (opened).timeout``, ``entry.within``."""
    out = ""
    for k, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            if k == 1 and loc[0] == "steps" and part < len(step_ids) and step_ids[part]:
                out += f" ({step_ids[part]})"
        else:
            out += f".{part}" if out else part
    return out or "journey"


def _links(step: Any) -> list[tuple[Loc, str]]:
    """Each successor of a step with the field that names it."""
    if isinstance(step, SplitStep):
        branches = [(("branches", i, "next"), b.next) for i, b in enumerate(step.branches)]
        return [*branches, (("otherwise",), step.otherwise)]
    if isinstance(step, RandomSplitStep):
        return [(("branches", i, "next"), b.next) for i, b in enumerate(step.branches)]
    if isinstance(step, WaitForStep):
        return [(("on_event",), step.on_event), (("on_timeout",), step.on_timeout)]
    return [(("next",), t) for t in successors(step)]


def graph_problems(steps: list[Any]) -> list[tuple[Loc, str]]:
    """Every problem of the step graph as (location, reason), so a loader can report them all
    at once: duplicate ids, unknown successors, ``of`` not a message step, path shares that do
    not sum to 1, steps the first cannot reach, a cycle through no wait."""
    problems: list[tuple[Loc, str]] = []
    if not steps:
        return problems
    by_id: dict[str, Any] = {}
    for k, s in enumerate(steps):
        if s.id in by_id:
            problems.append((("steps", k, "id"), f"duplicate step id {s.id!r}"))
        else:
            by_id[s.id] = s
    for k, s in enumerate(steps):
        for field, target in _links(s):
            if target not in by_id:
                problems.append((("steps", k, *field), f"unknown next step {target!r}"))
        of = s.of if isinstance(s, WaitForStep) else None
        if of is not None and not isinstance(by_id.get(of), MessageStep):
            problems.append((("steps", k, "of"), f"{of!r} is not a message step"))
        if isinstance(s, RandomSplitStep):
            total = sum(b.share for b in s.branches)
            if abs(total - 1.0) > 1e-9:
                problems.append((("steps", k, "branches"), f"shares sum to {total:g}, not 1"))
    reached, todo = {steps[0].id}, [steps[0].id]
    while todo:
        for t in successors(by_id[todo.pop()]):
            if t in by_id and t not in reached:
                reached.add(t)
                todo.append(t)
    for k, s in enumerate(steps):
        if s.id not in reached:
            problems.append((("steps", k), "unreachable from the first step"))
    cycle = _cycle_without_wait(by_id)
    if cycle:
        first = next(k for k, s in enumerate(steps) if s.id == cycle[0])
        problems.append((("steps", first), f"cycle with no wait: {' -> '.join(cycle)}"))
    return problems


def _cycle_without_wait(by_id: dict[str, Any]) -> list[str] | None:
    """A cycle through steps none of which waits (it would loop at once, for ever)."""
    instant = {k: s for k, s in by_id.items() if not isinstance(s, WaitStep | WaitForStep)}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(k: str) -> list[str] | None:
        state[k] = 1
        path.append(k)
        for t in successors(instant[k]):
            if t not in instant:
                continue
            if state.get(t) == 1:
                return path[path.index(t) :] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[k] = 2
        path.pop()
        return None

    for k in instant:
        if k not in state and (found := visit(k)):
            return found
    return None


def journey_schema() -> dict[str, Any]:
    """The JSON Schema of a journey file, for editors."""
    return Journey.model_json_schema(mode="validation")
