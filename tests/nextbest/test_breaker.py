"""The circuit breaker of feature reads and the ledger: closed, open, half-open probe."""

from __future__ import annotations

import pytest

from nextbest.breaker import Breaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _breaker(clock: Clock) -> Breaker:
    return Breaker("features", failures=2, reset_seconds=1.0, clock=clock)


# each step: what happens (admit / ok / fail / wait seconds), then the state after it
STEPS = [
    ("admit", "closed"),
    ("fail", "closed"),  # one failure: still closed
    ("ok", "closed"),  # a success resets the count
    ("fail", "closed"),
    ("fail", "open"),  # two in a row open it
    ("refused", "open"),
    ("wait 0.5", "open"),
    ("refused", "open"),
    ("wait 0.6", "half-open"),
    ("probe", "half-open"),  # one probe goes through ...
    ("refused", "half-open"),  # ... and no other call meanwhile
    ("fail", "open"),  # a failed probe opens it again at once
    ("wait 1.1", "half-open"),
    ("probe", "half-open"),
    ("ok", "closed"),
    ("admit", "closed"),
]


def test_breaker_states() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for step, state in STEPS:
        if step == "admit":
            assert breaker.admit() is False
        elif step == "probe":
            assert breaker.admit() is True
        elif step == "refused":
            with pytest.raises(CircuitOpen, match="features circuit open after ConnectionError"):
                breaker.admit()
        elif step == "ok":
            breaker.success()
        elif step == "fail":
            breaker.failure(ConnectionError("refused"))
        else:
            clock.t += float(step.split()[1])
        assert breaker.state == state, step
    assert breaker.opened == 1  # a probe's failure keeps it open, it does not open it again


def test_failing_says_why_only_while_not_closed() -> None:
    breaker = _breaker(Clock())
    assert breaker.failing() is None
    breaker.failure(TimeoutError())
    assert breaker.failing() is None
    breaker.failure(TimeoutError("no answer within 100 ms"))
    assert breaker.failing() == "TimeoutError: no answer within 100 ms"
    breaker.success()
    assert breaker.failing() is None
