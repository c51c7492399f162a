"""What a journey instance does next, as a pure function of the journey and the instance's state.

No IO here: the runner (``serving.journey_runner``) reads the state, asks :func:`advance`,
does what the answer says (plan and send a message, register a wait) and writes the new state
in one transaction. Keeping the decision pure makes every step type a table of cases in a
test, and makes a retried step (after a crash) decide exactly as the first try did: the only
draw, ``random_split``'s, is a hash of the instance and the step, not a random number.

How the runner keeps the state: an instance sits on ``step_id`` until ``due_at``. A ``wait``
step moves it at once to the step after the wait, due when the wait ends. A ``wait_for`` step
keeps it on the ``wait_for`` step, due at the timeout, with a ``journey_waits`` row; the
ingest path resolves the wait on the event (deleting that row), and the runner, finding the
instance due on a ``wait_for`` step whose wait is still registered, takes the timeout branch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from journeys.definition import (
    OUTBOUND_CHANNELS,
    ExitStep,
    Journey,
    MessageStep,
    RandomSplitStep,
    ScoreRule,
    SplitStep,
    WaitForStep,
    WaitStep,
)
from offers.rules import COMPARE

# What the runner does for a transition, and the journey_steps result it records:
#   send     plan an offer on one of ``channels`` and put it in the outbox        -> sent|skipped
#   banner   record the step; /decide shows it on the customer's next visit         -> banner
#   postpone nothing now (quiet hours): stay on the step, due at ``due_at``        -> (no row)
#   wait     go to ``goto`` when ``due_at`` comes                                  -> waited
#   wait_for register ``wait``; stay on the step until the event or the timeout     -> waited
#   timeout  the wait expired: go to ``goto`` (on_timeout) at once                  -> timeout
#   branch   a split or random_split chose ``goto``                                 -> branch
#   exit     the journey is over for this instance                                  -> exit
Kind = Literal["send", "banner", "postpone", "wait", "wait_for", "timeout", "branch", "exit"]
RESULTS: dict[str, str] = {
    "banner": "banner",
    "wait": "waited",
    "wait_for": "waited",
    "timeout": "timeout",
    "branch": "branch",
    "exit": "exit",
}


@dataclass(frozen=True)
class State:
    """An instance as the engine sees it. ``waiting``: a wait of this (``wait_for``) step is
    registered, so the instance being due means its timeout came. ``profile``: the customer's
    profile fields (with the catalogue's derived fields); ``scores``: model scores by name."""

    instance_id: str
    step_id: str
    now: datetime
    waiting: bool = False
    path: str | None = None
    profile: Mapping[str, Any] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Wait:
    """What a ``wait_for`` step registers: ``event`` of the customer (about the message of
    step ``of``, when given), until ``expires_at``."""

    event: str
    of: str | None
    expires_at: datetime


@dataclass(frozen=True)
class Transition:
    """What to do on ``step_id`` and where the instance is afterwards: on ``goto`` (None: the
    instance completes), taken again at ``due_at``."""

    kind: Kind
    step_id: str
    goto: str | None
    due_at: datetime | None
    channels: tuple[str, ...] = ()  # send: the candidates (one, or best_channel's)
    wait: Wait | None = None
    path: str | None = None  # the instance's path after a random_split
    detail: str = ""

    @property
    def result(self) -> str | None:
        """The journey_steps result for this transition; ``send``'s is the runner's to say
        (sent or skipped), a postponement records none."""
        return RESULTS.get(self.kind)

    @property
    def completes(self) -> bool:
        return self.goto is None and self.kind != "postpone"


def advance(journey: Journey, state: State, salt: str) -> Transition:
    """The transition of ``state``'s step at ``state.now``. ``salt``: the settings'
    ``assignment_salt``, keying ``random_split``'s draw."""
    step = journey.step(state.step_id)
    now = state.now
    if isinstance(step, MessageStep):
        return _message(journey, step, now)
    if isinstance(step, WaitStep):
        if step.duration is not None:
            due = now + step.duration
            return Transition("wait", step.id, step.next, due, detail=f"until {_iso(due)}")
        due = next_local(step.until, now, journey.rules.zone())  # type: ignore[arg-type]
        nxt = journey.step(step.next)
        if isinstance(nxt, MessageStep) and nxt.channel in OUTBOUND_CHANNELS:
            due = after_quiet(journey, nxt.channel, due) or due
        return Transition("wait", step.id, step.next, due, detail=f"until {_iso(due)}")
    if isinstance(step, WaitForStep):
        if state.waiting:
            return Transition(
                "timeout", step.id, step.on_timeout, now, detail=f"no {step.event} in time"
            )
        wait = Wait(step.event, step.of, now + step.timeout)
        detail = f"{step.event} until {_iso(wait.expires_at)}"
        return Transition("wait_for", step.id, step.id, wait.expires_at, wait=wait, detail=detail)
    if isinstance(step, SplitStep):
        for k, branch in enumerate(step.branches):
            if all(holds(c, state.profile, state.scores) for c in branch.when):
                return Transition("branch", step.id, branch.next, now, detail=f"branch {k}")
        return Transition("branch", step.id, step.otherwise, now, detail="otherwise")
    if isinstance(step, RandomSplitStep):
        u = draw(salt, state.instance_id, step.id)
        acc, chosen = 0.0, step.branches[-1]  # the last absorbs rounding
        for branch in step.branches:
            acc += branch.share
            if u < acc:
                chosen = branch
                break
        path = chosen.name if state.path is None else f"{state.path}/{chosen.name}"[:40]
        return Transition("branch", step.id, chosen.next, now, path=path, detail=chosen.name)
    if isinstance(step, ExitStep):
        return Transition("exit", step.id, None, None, detail="exit step")
    raise TypeError(f"journey {journey.name}: step {state.step_id!r} of unknown type")


def _message(journey: Journey, step: MessageStep, now: datetime) -> Transition:
    """Outbound channels send now, or later when all candidates are in quiet hours; a banner
    (web, app, or any channel that is not outbound) is recorded for the next visit."""
    if step.channel != "best_channel" and step.channel not in OUTBOUND_CHANNELS:
        return Transition("banner", step.id, step.next, now, channels=(step.channel,))
    if step.channel == "best_channel":
        options = [c for c in step.channels if c in OUTBOUND_CHANNELS] or list(OUTBOUND_CHANNELS)
    else:
        options = [step.channel]
    ends = {c: after_quiet(journey, c, now) for c in options}
    open_now = tuple(c for c in options if ends[c] is None)
    if open_now:
        return Transition("send", step.id, step.next, now, channels=open_now)
    due = min(e for e in ends.values() if e is not None)
    return Transition("postpone", step.id, step.id, due, detail=f"quiet hours until {_iso(due)}")


def after_quiet(journey: Journey, channel: str, at: datetime) -> datetime | None:
    """When ``channel``'s quiet hours end, if ``at`` falls inside them; else None."""
    quiet = journey.rules.quiet_hours.get(channel)  # type: ignore[call-overload]
    if quiet is None:
        return None
    zone = journey.rules.zone()
    local = at.astimezone(zone)
    if not quiet.covers(local.time()):
        return None
    return next_local(quiet.end, at, zone)


def next_local(t: time, after: datetime, zone: ZoneInfo) -> datetime:
    """The first moment after ``after`` when the local clock of ``zone`` reads ``t`` (UTC)."""
    local = after.astimezone(zone)
    candidate = datetime.combine(local.date(), t, tzinfo=zone)
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), t, tzinfo=zone)
    return candidate.astimezone(UTC)


def draw(salt: str, instance_id: str, step_id: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, instance, step): a retried step draws the same."""
    digest = hashlib.sha256(f"{salt}\x1fjourney\x1f{instance_id}\x1f{step_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def holds(condition: Any, profile: Mapping[str, Any], scores: Mapping[str, float]) -> bool:
    """A split condition: a profile-field rule (``offers.rules.Rule``) or a score rule; a
    missing field or score never holds (the safe side, as in eligibility)."""
    if isinstance(condition, ScoreRule):
        x = scores.get(condition.score)
        if x is None or x != x:
            return False
        if condition.op in ("in", "not_in"):  # a single number: membership is equality
            return (x == condition.value) == (condition.op == "in")
        return bool(COMPARE[condition.op](float(x), condition.value))
    return bool(condition.matches(profile))


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
