"""Bring-your-own-CSV churn: messy tables, exact errors, and the IBM telco AUC floor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nextbest.cli import app
from tests.conftest import shared_file
from training.tabular import TabularError, cross_validate_csv, encode_label, prepare_features


def _messy(tmp_path: Path, n: int = 400) -> Path:
    """A seeded table with a Yes/No label, categories, text-typed numbers with blanks, notes."""
    rng = np.random.default_rng(0)
    plan = rng.choice(["basic", "plus", "max"], n)
    tenure = rng.integers(1, 72, n)
    risk = (plan == "basic") * 1.2 - tenure / 30 + rng.normal(0, 1, n)
    charges = [" " if i % 37 == 0 else f"{t * 20.5:.2f}" for i, t in enumerate(tenure)]
    notes = [
        f"customer {'angry about price' if r > 0.5 else 'happy'} call {i}"
        for i, r in enumerate(risk)
    ]
    df = pd.DataFrame(
        {
            "customer": [f"C{i:05d}" for i in range(n)],
            "plan": plan,
            "tenure": tenure,
            "total_charges": charges,
            "notes": notes,
            "churned": np.where(risk > 0.3, "Yes", "No"),
        }
    )
    path = tmp_path / "messy.csv"
    df.to_csv(path, index=False)
    return path


def test_messy_table_learns_and_drops_identifiers(tmp_path: Path) -> None:
    result = cross_validate_csv(_messy(tmp_path), "churned", id_col="customer", folds=3)
    assert result.positive_label == "Yes"
    assert "customer" in result.dropped_columns
    assert result.auc_mean > 0.75  # the label is a noisy function of plan, tenure and notes


def test_prepare_features_types() -> None:
    df = pd.DataFrame({"n": [" ", "1.5", "2"] * 10, "c": ["a", "b", "a"] * 10})
    x, dropped = prepare_features(df)
    assert x["n"].dtype.kind == "f" and x["n"].isna().sum() == 10
    assert isinstance(x["c"].dtype, pd.CategoricalDtype)
    assert dropped == []


@pytest.mark.parametrize(
    ("values", "positive"),
    [(["Yes", "No", "No"], "Yes"), (["0", "1", "1"], "1"), (["stay", "leave", "stay"], "leave")],
)
def test_label_encoding(values: list[str], positive: str) -> None:
    y, pos = encode_label(pd.Series(values), "label")
    assert pos == positive
    assert y.tolist() == [int(v == positive) for v in values]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return path


BAD = [
    ("", {}, r"^csv: .*bad\.csv is empty$"),
    ("a,b\n", {}, r"^csv: .*bad\.csv has a header but no rows$"),
    ("a,b\n1,Yes\n", {"label": "churn"}, r"^label: column 'churn' not in CSV \(columns: a, b\)$"),
    (
        "a,b\n1,x\n2,y\n3,z\n",
        {},
        r"^label: column 'b' must have exactly 2 values, found 3: x, y, z$",
    ),
    ("a,b\n1,Yes\n2,No\n", {"id_col": "cid"}, r"^id: column 'cid' not in CSV$"),
    ("a,b\n1,Yes\n2,No\n", {}, r"^label: need at least 10 rows of each class for 5-fold CV"),
]


@pytest.mark.parametrize(("text", "kwargs", "error"), BAD)
def test_bad_tables(tmp_path: Path, text: str, kwargs: dict, error: str) -> None:
    args = {"label": "b", **kwargs}
    with pytest.raises(TabularError, match=error):
        cross_validate_csv(_write(tmp_path, text), **args)


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b\n1,x\n2,y\n3,z\n")
    result = CliRunner().invoke(app, ["train", "churn", "--csv", str(path), "--label", "b"])
    assert result.exit_code == 2
    assert "error: label: column 'b' must have exactly 2 values" in result.output


def test_ibm_telco_beats_logistic_regression_floor() -> None:
    path = shared_file("wa_churn.csv.gz")
    cli = CliRunner().invoke(
        app, ["train", "churn", "--csv", str(path), "--label", "churn", "--json"]
    )
    assert cli.exit_code == 0, cli.output
    result = json.loads(cli.output.strip().splitlines()[-1])
    assert result["rows"] == 7043 and result["positive_label"] == "Yes"
    assert result["auc_mean"] >= 0.845, result
    assert result["auc_mean"] > result["baseline_logistic_auc_mean"]
