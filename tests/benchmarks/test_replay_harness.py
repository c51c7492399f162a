"""How the replay cuts its visits into batches decided together."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.replay_harness import Recorder, batch_bounds


def test_batches_follow_the_windows() -> None:
    # minutes since the first visit; windows of 60 minutes
    offsets = np.array([0.0, 10, 59.9, 60, 61, 200, 200, 239.9])
    assert batch_bounds(offsets, 60, ()) == [(0, 3, 0), (3, 5, 1), (5, 8, 3)]


def test_batches_are_cut_at_retrains_and_checkpoints() -> None:
    offsets = np.zeros(10)  # every visit in one window
    assert batch_bounds(offsets, 60, (4, 5)) == [(0, 4, 0), (4, 5, 0), (5, 8, 0), (8, 10, 0)]


def test_one_visit_is_one_batch() -> None:
    assert batch_bounds(np.array([3.0]), 1, (1,)) == [(0, 1, 3)]


@pytest.mark.parametrize("window", [0, -1, float("nan")])
def test_a_window_must_be_positive(window) -> None:
    with pytest.raises(ValueError, match=f"window must be > 0, got {window}"):
        batch_bounds(np.zeros(3), window, ())


class _Policy:
    version = "p:0"

    def __init__(self) -> None:
        self.n = 0

    def distribution(self, features, channel, context, allowed, scores=None) -> dict:
        self.n += 1
        return {o: (1.0 if k == 0 else 0.0) for k, o in enumerate(allowed)} | {"n": self.n}


def test_the_recorder_keeps_every_distribution_in_call_order() -> None:
    bandit = Recorder(_Policy())
    for allowed in (["a"], ["b", "c"]):
        bandit.distribution({}, "web", {}, allowed)
    assert bandit.calls == [{"a": 1.0, "n": 1}, {"b": 1.0, "c": 0.0, "n": 2}]
    assert bandit.last == bandit.calls[-1]
