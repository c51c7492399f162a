"""The engine's transitions, step type by step type: tables of state in, transition out."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from journeys.definition import Journey
from journeys.engine import State, Transition, Wait, advance, after_quiet, draw, next_local

SALT = "test-salt"
# 2024-01-15 is winter (London = UTC); 2024-07-15 is summer (London = UTC+1)
WINTER = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
SUMMER = datetime(2024, 7, 15, 12, 0, tzinfo=UTC)

JOURNEY = Journey.model_validate(
    yaml.safe_load(
        """
name: engine_case
offers: [device_upgrade, data_addon]
entry: {type: intent, event: basket_add}
rules:
  quiet_hours:
    email: "21:00-08:00"
    sms: "20:00-09:00"
    call_centre: "12:00-13:00"
steps:
  - {id: banner, type: message, channel: web, next: wait_hour}
  - {id: wait_hour, type: wait, duration: 1h, next: email}
  - {id: email, type: message, channel: email, next: opened}
  - {id: opened, type: wait_for, event: email_open, of: email, timeout: 24h,
     on_event: done, on_timeout: morning}
  - {id: morning, type: wait, until: "07:30", next: sms}
  - {id: sms, type: message, channel: sms, next: pick}
  - id: pick
    type: split
    branches:
      - when: [{score: churn_risk, op: ">", value: 0.3}]
        next: best
      - when: [{field: plan, op: in, value: [prepaid]}, {field: arpu, op: "<", value: 20}]
        next: paths
    otherwise: done
  - id: paths
    type: random_split
    branches:
      - {name: a, share: 0.25, next: best}
      - {name: b, share: 0.75, next: done}
  - {id: best, type: message, channel: best_channel, channels: [email, sms, web]}
  - {id: done, type: exit}
"""
    )
)


def _at(ts: datetime, hours: float = 0) -> datetime:
    return ts + timedelta(hours=hours)


CASES = [
    # (name, state, expected transition)
    (
        "web message: a banner, then the next step at once",
        State("i1", "banner", WINTER),
        Transition("banner", "banner", "wait_hour", WINTER, channels=("web",)),
    ),
    (
        "wait with a duration: due after it, on the next step",
        State("i1", "wait_hour", WINTER),
        Transition(
            "wait", "wait_hour", "email", _at(WINTER, 1), detail="until 2024-01-15T13:00:00Z"
        ),
    ),
    (
        "e-mail at noon: sent now",
        State("i1", "email", WINTER),
        Transition("send", "email", "opened", WINTER, channels=("email",)),
    ),
    (
        "e-mail at 22:00 London (winter): postponed to 08:00 the next morning",
        State("i1", "email", _at(WINTER, 10)),
        Transition(
            "postpone",
            "email",
            "email",
            datetime(2024, 1, 16, 8, 0, tzinfo=UTC),
            detail="quiet hours until 2024-01-16T08:00:00Z",
        ),
    ),
    (
        "e-mail at 01:00 London (summer, 00:00 UTC): postponed to 08:00 London, 07:00 UTC",
        State("i1", "email", datetime(2024, 7, 16, 0, 0, tzinfo=UTC)),
        Transition(
            "postpone",
            "email",
            "email",
            datetime(2024, 7, 16, 7, 0, tzinfo=UTC),
            detail="quiet hours until 2024-07-16T07:00:00Z",
        ),
    ),
    (
        "e-mail at 08:00 London sharp: the quiet hours are over",
        State("i1", "email", datetime(2024, 1, 16, 8, 0, tzinfo=UTC)),
        Transition("send", "email", "opened", datetime(2024, 1, 16, 8, 0, tzinfo=UTC), ("email",)),
    ),
    (
        "wait_for: registers the wait, stays on the step until the timeout",
        State("i1", "opened", WINTER),
        Transition(
            "wait_for",
            "opened",
            "opened",
            _at(WINTER, 24),
            wait=Wait("email_open", "email", _at(WINTER, 24)),
            detail="email_open until 2024-01-16T12:00:00Z",
        ),
    ),
    (
        "wait_for due while its wait is registered: the timeout branch",
        State("i1", "opened", _at(WINTER, 24), waiting=True),
        Transition("timeout", "opened", "morning", _at(WINTER, 24), detail="no email_open in time"),
    ),
    (
        "wait until 07:30 before an SMS: pushed to 09:00, the end of the SMS quiet hours",
        State("i1", "morning", WINTER),
        Transition(
            "wait",
            "morning",
            "sms",
            datetime(2024, 1, 16, 9, 0, tzinfo=UTC),
            detail="until 2024-01-16T09:00:00Z",
        ),
    ),
    (
        "split on a score: churn risk above 0.3",
        State("i1", "pick", WINTER, profile={"plan": "prepaid"}, scores={"churn_risk": 0.5}),
        Transition("branch", "pick", "best", WINTER, detail="branch 0"),
    ),
    (
        "split on profile fields: every rule of the branch holds",
        State("i1", "pick", WINTER, profile={"plan": "prepaid", "arpu": 10.0}, scores={}),
        Transition("branch", "pick", "paths", WINTER, detail="branch 1"),
    ),
    (
        "split: one rule fails (arpu), a missing score never holds: otherwise",
        State("i1", "pick", WINTER, profile={"plan": "prepaid", "arpu": 30.0}),
        Transition("branch", "pick", "done", WINTER, detail="otherwise"),
    ),
    (
        "best_channel at noon: the outbound candidates, the banner channel left out",
        State("i1", "best", WINTER),
        Transition("send", "best", None, WINTER, channels=("email", "sms")),
    ),
    (
        "best_channel at 20:30: SMS is quiet, e-mail is not",
        State("i1", "best", _at(WINTER, 8.5)),
        Transition("send", "best", None, _at(WINTER, 8.5), channels=("email",)),
    ),
    (
        "best_channel at 23:00: both quiet, postponed to the first end (08:00, e-mail)",
        State("i1", "best", _at(WINTER, 11)),
        Transition(
            "postpone",
            "best",
            "best",
            datetime(2024, 1, 16, 8, 0, tzinfo=UTC),
            detail="quiet hours until 2024-01-16T08:00:00Z",
        ),
    ),
    (
        "exit: the instance completes",
        State("i1", "done", WINTER),
        Transition("exit", "done", None, None, detail="exit step"),
    ),
]


@pytest.mark.parametrize(("name", "state", "expected"), CASES, ids=[c[0] for c in CASES])
def test_transitions(name: str, state: State, expected: Transition) -> None:
    assert advance(JOURNEY, state, SALT) == expected


@pytest.mark.parametrize(
    ("kind", "result", "completes"),
    [
        ("banner", "banner", False),
        ("wait", "waited", False),
        ("wait_for", "waited", False),
        ("timeout", "timeout", False),
        ("branch", "branch", False),
        ("postpone", None, False),
        ("send", None, False),
    ],
)
def test_results_recorded(kind: str, result: str | None, completes: bool) -> None:
    t = Transition(kind, "s", "next", WINTER)  # type: ignore[arg-type]
    assert (t.result, t.completes) == (result, completes)
    assert Transition("exit", "done", None, None).completes


def test_random_split_is_deterministic_and_follows_the_shares() -> None:
    taken = Counter()
    for k in range(4000):
        state = State(f"inst-{k}", "paths", WINTER)
        first = advance(JOURNEY, state, SALT)
        assert advance(JOURNEY, state, SALT) == first  # a retried step draws the same
        taken[first.path] += 1
        assert first.goto == {"a": "best", "b": "done"}[first.path]
    # share 0.25 of 4000: sd ~27, so 1000 +- 110 is about four standard deviations
    assert abs(taken["a"] - 1000) < 110, taken
    states = [State(f"inst-{k}", "paths", WINTER) for k in range(50)]
    other_salt = [advance(JOURNEY, s, "x").path for s in states]
    mine = [advance(JOURNEY, s, SALT).path for s in states]
    assert other_salt != mine  # the salt keys the draw


def test_random_split_appends_to_an_earlier_path() -> None:
    t = advance(JOURNEY, State("inst-1", "paths", WINTER, path="x"), SALT)
    assert t.path == f"x/{t.detail}"


@pytest.mark.parametrize(
    ("local", "expected_utc"),
    [
        (datetime(2024, 1, 15, 6, 0, tzinfo=UTC), datetime(2024, 1, 15, 7, 30, tzinfo=UTC)),
        (datetime(2024, 1, 15, 7, 30, tzinfo=UTC), datetime(2024, 1, 16, 7, 30, tzinfo=UTC)),
        (datetime(2024, 7, 15, 5, 0, tzinfo=UTC), datetime(2024, 7, 15, 6, 30, tzinfo=UTC)),
        # the night the clocks go forward (31 March 2024): 07:30 BST is 06:30 UTC
        (datetime(2024, 3, 30, 23, 0, tzinfo=UTC), datetime(2024, 3, 31, 6, 30, tzinfo=UTC)),
    ],
)
def test_next_local_time(local: datetime, expected_utc: datetime) -> None:
    from datetime import time

    assert next_local(time(7, 30), local, JOURNEY.rules.zone()) == expected_utc


def test_quiet_hours_that_do_not_wrap_midnight() -> None:
    assert after_quiet(JOURNEY, "call_centre", _at(WINTER, 0.5)) == _at(WINTER, 1)
    assert after_quiet(JOURNEY, "call_centre", _at(WINTER, 1)) is None
    assert after_quiet(JOURNEY, "paid_media", _at(WINTER, 0.5)) is None  # none configured


def test_draw_is_uniform_in_unit_interval() -> None:
    xs = [draw(SALT, f"i{k}", "s") for k in range(2000)]
    assert min(xs) >= 0 and max(xs) < 1 and abs(sum(xs) / len(xs) - 0.5) < 0.03
