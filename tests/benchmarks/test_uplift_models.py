"""The uplift league's yardstick and peers: our Qini against CausalML's on the Hillstrom test,
and every peer learner fitted for real on a small planted effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.uplift_models import PEERS, Dataset, hillstrom_datasets, peer_uplift, score
from experiments.qini import qini_curve
from tests.conftest import shared_file
from training.scoring import TREATED


def test_our_qini_matches_causalml_on_hillstrom() -> None:
    """Womens E-Mail vs No E-Mail, visits, ranked by purchase history (jittered: no ties, so
    both libraries sort alike): the same Q(k) at every k, and the same area to 4 digits."""
    metrics = pytest.importorskip("causalml.metrics")
    df = pd.read_csv(shared_file("hillstrom.csv.gz"))
    df = df[df.segment.isin(["Womens E-Mail", "No E-Mail"])].reset_index(drop=True)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "y": df.visit.to_numpy(float),
            "w": (df.segment == "Womens E-Mail").to_numpy(int),
            "score": df.history.to_numpy() + rng.random(len(df)) * 1e-3,
        }
    )
    theirs = metrics.get_qini(frame, outcome_col="y", treatment_col="w")["score"].to_numpy()
    n = len(frame)
    ours = qini_curve(frame.score, frame.w, frame.y, "history", points=n + 1)
    np.testing.assert_allclose(ours.incremental, theirs, rtol=1e-9, atol=1e-9)
    # their curve's mean height over the random line = our trapezoid area to O(1/n)
    area = float(np.mean(theirs[1:] - np.arange(1, n + 1) / n * theirs[-1]))
    assert ours.qini == pytest.approx(area, rel=1e-4)


def planted(n: int, seed: int) -> pd.DataFrame:
    """Treatment lifts conversion by 30 points where x > 0.5 and by nothing elsewhere."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    t = (rng.random(n) < 0.5).astype(int)
    y = (rng.random(n) < 0.1 + 0.3 * (x > 0.5) * t).astype(int)
    return pd.DataFrame({"x": x, "noise": rng.random(n), TREATED: t, "label": y})


@pytest.mark.parametrize("name", PEERS)
def test_every_peer_learner_finds_a_planted_effect(name: str) -> None:
    pytest.importorskip("causalml")
    data = Dataset("planted", planted(2000, 1), planted(800, 2), ["x", "noise"])
    uplift = peer_uplift(name, data, seed=0)
    responsive = data.test["x"].to_numpy() > 0.5
    assert uplift[responsive].mean() - uplift[~responsive].mean() > 0.15
    assert score(data, uplift)["qini"] > 0


def test_hillstrom_data_sets_cross_fit_every_row() -> None:
    sets = hillstrom_datasets(shared_file("hillstrom.csv.gz"), seed=7)
    assert [d.name for d in sets] == [
        "hillstrom womens e-mail, visit",
        "hillstrom womens e-mail, conversion",
        "hillstrom any e-mail, visit",
        "hillstrom any e-mail, conversion",
    ]
    womens, anymail = sets[0], sets[2]
    assert len(womens.test) == 21387 + 21306 and len(anymail.test) == 64000
    splits = womens.splits()
    assert len(splits) == 2
    rows = np.sort(np.concatenate([r for _, r in splits]))
    np.testing.assert_array_equal(rows, np.arange(len(womens.test)))
    for part, held in splits:  # a fold is never in its own model's training rows
        assert len(part.train) + len(held) == len(womens.test)


def test_league_names_a_missing_csv(private_home) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from nextbest.cli import app

    pytest.importorskip("causalml")
    missing = private_home / "hillstrom.csv"
    result = CliRunner().invoke(
        app, ["bench", "uplift-models", "--customers", "0", "--csv", str(missing)]
    )
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --csv: {missing} does not exist"
