"""The learning loop through the real pipeline, scored against the simulator's truth."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.replay import run_replay
from benchmarks.replay_results import gap, greedy_value, linear_ceiling, summarise


def test_summary_values_by_hand() -> None:
    values = np.array([[0.0, 2.0, -1.0], [0.0, 1.0, 3.0]])
    allowed = np.array([[True, True, True], [True, False, True]])
    probs = np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    policy, random, single, oracle, best = summarise(values, allowed, probs)
    assert policy == pytest.approx((2.0 + 1.5) / 2)
    assert random == pytest.approx((1.0 / 3 + 1.5) / 2)
    assert oracle == pytest.approx((2.0 + 3.0) / 2)
    # offer 1 for everyone: 2 where allowed, nothing (0) where not; offer 2: (-1 + 3) / 2
    assert (single, best) == (1.0, 1)
    assert gap(policy, random, oracle) == pytest.approx((1.75 - 11 / 12) / (2.5 - 11 / 12))
    # exploration off: offer 1 on the first visit, offer 0 (the first of the tie) on the second
    assert greedy_value(values, probs) == pytest.approx((2.0 + 0.0) / 2)


def _linear_world(seed: int, n: int = 600) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Three offers whose values are linear in one number and a category; ``no_offer`` is 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    kind = rng.choice(["a", "b"], size=n)
    values = np.column_stack([x, -x + (kind == "b") * 1.5, 0.5 - 0.2 * x, np.zeros(n)])
    allowed = rng.random((n, 4)) < 0.8
    allowed[:, 3] = True
    features = [{"x": float(v), "kind": str(k)} for v, k in zip(x, kind, strict=True)]
    return features, values, allowed


def test_linear_ceiling_is_one_when_the_features_explain_the_values() -> None:
    features, values, allowed = _linear_world(0)
    assert linear_ceiling(features, values, allowed, window=200) > 0.97


def test_linear_ceiling_falls_to_the_best_average_offer_when_the_features_say_nothing() -> None:
    features, values, allowed = _linear_world(1)
    rng = np.random.default_rng(2)
    noise = [{"x": float(v)} for v in rng.normal(size=len(features))]  # unrelated to values
    # without information, the best a model can do is the offer best on average where allowed
    mean = values[:400].mean(axis=0)
    pick = np.where(allowed[400:], mean, -np.inf).argmax(axis=1)
    probs = np.zeros((200, 4))
    probs[np.arange(200), pick] = 1.0
    policy, random, _, oracle, _ = summarise(values[400:], allowed[400:], probs)
    assert linear_ceiling(noise, values, allowed, window=200) == pytest.approx(
        gap(policy, random, oracle), abs=0.05
    )


@pytest.mark.parametrize("window", [0, 600, 700])
def test_linear_ceiling_rejects_a_window_without_training_rows(window) -> None:
    features, values, allowed = _linear_world(0)
    with pytest.raises(ValueError, match=rf"window must be in \(0, 600\), got {window}"):
        linear_ceiling(features, values, allowed, window=window)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"visits": 0}, "visits must be >= 1, got 0"),
        ({"retrain_every": 0}, "retrain_every"),
        ({"span_days": 0}, "span_days must be > 0, got 0"),
        ({"batch_minutes": 0}, "batch_minutes must be > 0, got 0"),
    ],
)
def test_bad_arguments(kwargs, message, tmp_path) -> None:
    from nextbest.settings import Settings

    with pytest.raises(ValueError, match=message):
        run_replay(Settings(home=tmp_path), **{"visits": 10, **kwargs})


@pytest.mark.slow
def test_replay_learns_through_the_real_pipeline(tmp_path_factory) -> None:
    """A small world, 1,000 visits: the bandit beats uniform random and the best single offer,
    and every logged probability is the one the bandit drew from. Outcomes are reported as
    expected values so that 1,000 visits are enough to see learning (sampled conversions need
    far more). Measured: gap closed 0.57 when the bandit learns, 0.00 when ``learn`` and the
    retraining are made no-ops (no models are trained here, so there are no scores to lean on)."""
    from nextbest.db import engine_for
    from nextbest.settings import Settings
    from record.ledger import Ledger

    settings = Settings(home=tmp_path_factory.mktemp("replay_home"), customers=400, days=30)
    result = run_replay(
        settings, 1000, retrain_every=500, exploration="squarecb", outcomes="expected",
        checkpoints=4, window=500, progress=False,
    )  # fmt: skip
    assert result.logged_matches_policy == 1.0
    assert result.gap_closed > 0.3 and result.policy > result.best_single, result
    assert result.oracle >= result.policy
    assert result.linear_ceiling is not None and result.linear_ceiling > 0.3, result
    assert result.greedy_gap_closed is not None and result.greedy_gap_closed > 0.3, result
    assert result.retrains[0]["promoted"] and result.retrains[0]["serving"] == "bandit:1"
    ledger = Ledger(engine_for(f"sqlite:///{settings.home / 'replay' / 'ledger.db'}"))
    counts = ledger.counts()
    assert counts["decisions"] == 1000
    assert counts["outcomes"] == result.treated_visits  # one expected-value report each
    assert result.plot and (settings.reports_dir / "replay_squarecb_expected.png").exists()


@pytest.mark.slow
def test_a_batched_replay_logs_the_true_probabilities_and_repeats_for_a_seed(
    tmp_path_factory,
) -> None:
    """Visits decided a simulated hour at a time (several per batch in this small world, a
    customer sometimes twice): every decision's logged probabilities are the bandit's, checked
    for each one, and the same seed gives the same figures (draws, ids and learning order)."""
    from nextbest.settings import Settings

    settings = Settings(home=tmp_path_factory.mktemp("batched_home"), customers=300, days=20)
    runs = [
        run_replay(
            settings,
            400,
            retrain_every=200,
            exploration="squarecb",
            seed=3,
            checkpoints=4,
            window=100,
            check_every=1,
            batch_minutes=60.0,
            plot=False,
            progress=False,
        )  # fmt: skip
        for _ in range(2)
    ]
    assert runs[0].logged_matches_policy == 1.0, runs[0]
    assert runs[0].treated_visits > 100
    same = ("policy", "random", "oracle", "gap_closed", "treated_visits", "curve", "linear_ceiling")
    first, second = (r.model_dump(include=set(same)) for r in runs)
    assert first == second


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--visits", "0"], "error: visits must be >= 1, got 0"),
        (
            ["--visits", "5", "--exploration", "greedy"],
            "error: exploration: 'greedy' is not one of epsilon, squarecb",
        ),
        (["--visits", "5", "--outcomes", "mean"], "error: outcomes: 'mean' is not one of sampled"),
    ],
)
def test_replay_cli_rejects_bad_options(args, message) -> None:
    from typer.testing import CliRunner

    from nextbest.cli import app

    result = CliRunner().invoke(app, ["replay", *args])
    assert result.exit_code == 2 and message in result.output
