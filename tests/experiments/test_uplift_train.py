"""`nextbest uplift train`: Nextbest's uplift model on a user's own experiment table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from nextbest.cli import app


def experiment(n: int, seed: int) -> pd.DataFrame:
    """A planted effect: the offer lifts conversion by 25 points for 'responsive' customers
    (age under 30 on the app) and by nothing for everyone else, on a 10% base."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "id": [f"u{seed}-{i}" for i in range(n)],
            "age": rng.integers(18, 70, n),
            "device": rng.choice(["app", "web"], n),
            "spend_90d": rng.gamma(2.0, 30.0, n).round(2),
            "arm": rng.choice(["offer", "control"], n, p=[0.7, 0.3]),
        }
    )
    responsive = (df.age < 30) & (df.device == "app")
    p = 0.10 + 0.25 * responsive * (df.arm == "offer")
    df["converted"] = np.where(rng.random(n) < p, "yes", "no")
    return df


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("uplift_train")
    experiment(4000, 1).to_csv(root / "train.csv", index=False)
    test = experiment(600, 2)
    test[["id", "age", "device", "spend_90d"]].to_csv(root / "test.csv", index=False)
    test.to_csv(root / "test_truth.csv", index=False)
    return {
        "train": root / "train.csv",
        "test": root / "test.csv",
        "truth": root / "test_truth.csv",
    }


def args(files: dict[str, Path], out: Path, **over: str) -> list[str]:
    opts = {"--csv": str(files["train"]), "--treatment": "arm", "--treated": "offer",
            "--outcome": "converted", "--id": "id", "--predict": str(files["test"]),
            "--out": str(out)}  # fmt: skip
    opts.update({f"--{k}": v for k, v in over.items()})
    return ["uplift", "train", *[x for kv in opts.items() for x in kv], "--json"]


def test_ranks_the_treated_responsive_rows_first(
    files: dict[str, Path], private_home: Path
) -> None:
    out = private_home / "scores.csv"
    result = CliRunner().invoke(app, args(files, out))
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(out)
    truth = pd.read_csv(files["truth"])
    assert list(scores.columns) == ["id", "uplift"]
    assert scores["id"].tolist() == truth["id"].tolist()  # every row, in the file's order
    responsive = ((truth.age < 30) & (truth.device == "app")).to_numpy()
    assert roc_auc_score(responsive, scores["uplift"]) > 0.9
    top = scores["uplift"].rank(ascending=False) <= responsive.sum()
    assert responsive[top.to_numpy()].mean() > 0.75
    gap = scores["uplift"][responsive].mean() - scores["uplift"][~responsive].mean()
    assert 0.12 < gap < 0.4  # planted: 0.25


BAD = [
    ({"treatment": "group"}, r"train: column 'group' is missing \(columns: id, age, device, "),
    ({"outcome": "bought"}, r"train: column 'bought' is missing"),
    ({"id": "customer"}, r"train: column 'customer' is missing"),
    (
        {"treated": "Offer"},
        r"column 'arm': treated label 'Offer' not found; labels: \['control', 'offer'\]$",
    ),
    (
        {"outcome": "spend_90d"},
        r"column 'spend_90d' must be binary \(0/1, yes/no\); found [\d.]+ at line 2$",
    ),
    (
        {"outcome": "device"},
        r"column 'device' has a non-numeric value '(app|web)' at line 2 \(row 1\)$",
    ),
    ({"predict": "nowhere.csv"}, r"predict: file 'nowhere.csv' does not exist$"),
    ({"learner": "x"}, r"learner: 'x' is not one of staged, s, t$"),
]


@pytest.mark.parametrize(("over", "error"), BAD)
def test_bad_input_is_one_line_naming_it(
    files: dict[str, Path], private_home: Path, over: dict[str, str], error: str
) -> None:
    result = CliRunner().invoke(app, args(files, private_home / "o.csv", **over))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(error, lines[0]), lines[0]


def test_predict_file_without_a_covariate(files: dict[str, Path], private_home: Path) -> None:
    short = private_home / "short.csv"
    pd.read_csv(files["test"]).drop(columns="device").to_csv(short, index=False)
    result = CliRunner().invoke(app, args(files, private_home / "o.csv", predict=str(short)))
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: predict: column 'device' is missing (columns: id, age, spend_90d)"
    )
