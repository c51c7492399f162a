"""Customer lifetime value: point-in-time summaries with known counts, the CLI end to end, no
reading past the calibration end, exact errors, and BG/NBD parameters against the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nextbest.cli import app
from tests.conftest import shared_file
from training.clv_data import (
    ClvDataError,
    outcomes_between,
    purchase_days,
    read_transactions,
    summary_at,
)

END = pd.Timestamp("2024-06-30")


def _known() -> pd.DataFrame:
    """Three customers whose RFM figures are worked out by hand in the test below."""
    rows = [
        ("a", "2024-01-01", 10.0),
        ("a", "2024-01-01", 5.0),  # same day: one purchase day worth 15
        ("a", "2024-01-11", 20.0),
        ("a", "2024-03-01 18:30", 40.0),
        ("b", "2024-06-01", 7.0),
        ("c", "2024-02-01", 3.0),
        ("c", "2024-07-02", 99.0),  # after the calibration end
    ]
    df = pd.DataFrame(rows, columns=["customer_id", "date", "amount"])
    return df.assign(date=pd.to_datetime(df["date"], format="mixed"))


def test_summary_counts_same_day_once_and_stops_at_the_cutoff() -> None:
    days = purchase_days(_known())
    s = summary_at(days, END)
    assert s.loc["a", ["frequency", "recency", "T"]].tolist() == [2.0, 60.0, 181.0]
    assert s.loc["a", "monetary_value"] == pytest.approx(30.0)  # repeat days: 20 and 40
    assert s.loc["a", "first_amount"] == pytest.approx(15.0)
    assert s.loc["b"].loc[["frequency", "recency", "T", "monetary_value"]].tolist() == [
        0.0, 0.0, 29.0, 0.0,
    ]  # fmt: skip
    assert s.loc["c", "total_spend"] == pytest.approx(3.0)  # the July purchase is not seen
    after = outcomes_between(days, s.index, END, 30)
    assert after["purchases"].tolist() == [0.0, 0.0, 1.0]
    assert after["spend"].tolist() == [0.0, 0.0, 99.0]


def test_summary_matches_pymc_marketing_rfm_summary() -> None:
    from pymc_marketing.clv import rfm_summary

    tx = _known()
    tx = tx.loc[tx["date"] <= END]
    ours = summary_at(purchase_days(tx), END)
    theirs = rfm_summary(
        tx.assign(date=tx["date"].dt.normalize()),
        "customer_id",
        "date",
        monetary_value_col="amount",
        observation_period_end=END,
        time_unit="D",
    ).set_index("customer_id")
    cols = ["frequency", "recency", "T", "monetary_value"]
    pd.testing.assert_frame_equal(ours[cols], theirs[cols], check_dtype=False, check_names=False)


def _population(n: int = 160, days: int = 240, seed: int = 3) -> pd.DataFrame:
    """Seeded buy-till-you-die customers: Poisson purchases until a geometric dropout."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01")
    rows = []
    for i in range(n):
        first = int(rng.integers(0, 60))
        rate = rng.gamma(0.8, 1 / 25)  # purchases per day while alive
        life = int(rng.geometric(1 / 150))
        mean = rng.gamma(6, 5)
        t = first
        rows.append((f"C{i:04d}", start + pd.Timedelta(days=t), round(rng.gamma(6, mean / 6), 2)))
        while True:
            t += int(rng.exponential(1 / max(rate, 1e-3))) + 1
            if t >= min(first + life, days):
                break
            rows.append((f"C{i:04d}", start + pd.Timedelta(days=t), rng.gamma(6, mean / 6)))
    return pd.DataFrame(rows, columns=["cust", "when", "value"])


def _cli(path: Path, out: Path, end: str = "2024-06-30") -> list[str]:
    return [
        "clv", "predict", "--csv", str(path), "--customer", "cust", "--date", "when",
        "--amount", "value", "--calibration-end", end, "--horizon-days", "60",
        "--out", str(out), "--json",
    ]  # fmt: skip


def test_cli_predicts_every_customer_and_ignores_planted_late_rows(tmp_path: Path) -> None:
    tx = _population()
    seen = set(tx.loc[tx["when"] <= pd.Timestamp("2024-06-30 23:59"), "cust"])
    clean = tmp_path / "clean.csv"
    tx.to_csv(clean, index=False)
    late = pd.DataFrame(
        {
            "cust": ["C0000", "C0001", "NEWCOMER"],
            "when": pd.to_datetime(
                ["2024-07-01", "2024-07-02 00:10", "2024-07-05"], format="mixed"
            ),
            "value": [500.0, 1.0, 50.0],
        }
    )
    planted = tmp_path / "planted.csv"
    pd.concat([tx, late]).sample(frac=1.0, random_state=0).to_csv(planted, index=False)

    result = CliRunner().invoke(app, _cli(planted, tmp_path / "out.csv"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    out = pd.read_csv(tmp_path / "out.csv", dtype={"customer_id": str})
    assert list(out.columns) == ["customer_id", "expected_purchases", "expected_value", "p_alive"]
    assert set(out["customer_id"]) == seen and len(out) == len(seen)  # no NEWCOMER
    assert (out["expected_purchases"] >= 0).all() and (out["expected_value"] >= 0).all()
    assert out["p_alive"].between(0, 1).all()
    assert summary["chosen"] in ("btyd", "lightgbm") and summary["customers"] == len(seen)
    assert {v["model"] for v in summary["validation"]} == {"btyd", "lightgbm"}
    # the models see exactly the clean file's rows: the planted ones are dropped on reading
    # (fitting twice to compare outputs would double this test's time for the same proof)
    cols = {"customer": "cust", "date": "when", "amount": "value"}
    end = pd.Timestamp("2024-06-30")
    read = [
        read_transactions(p, calibration_end=end, **cols)
        .sort_values(["customer_id", "date", "amount"])
        .reset_index(drop=True)
        for p in (clean, planted)
    ]
    pd.testing.assert_frame_equal(read[0], read[1])


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tx.csv"
    path.write_text(text)
    return path


GOOD = "cust,when,value\nA,2024-01-03,10\n"
BAD = [
    (
        GOOD,
        {"customer": "id"},
        r"^customer: column 'id' is not in .*tx\.csv \(columns: cust, when, value\)$",
    ),
    (GOOD, {"date": "day"}, r"^date: column 'day' is not in "),
    (GOOD, {"amount": "spend"}, r"^amount: column 'spend' is not in "),
    (
        "cust,when,value\nA,2024-01-03,10\nB,soon,5\n",
        {},
        r"^date: 1 value\(s\) of column 'when' are not dates \(first: 'soon'\)$",
    ),
    (
        "cust,when,value\nA,2024-01-03,ten\n",
        {},
        r"^amount: 1 value\(s\) of column 'value' are not non-negative numbers \(first: 'ten'\)$",
    ),
    (
        "cust,when,value\nA,2024-01-03,-4\n",
        {},
        r"^amount: 1 value\(s\) of column 'value' are not non-negative",
    ),
    (
        "cust,when,value\nA,2024-08-03,4\n",
        {},
        r"^calibration-end: no transaction on or before 2024-06-30$",
    ),
    ("cust,when,value\n", {}, r"^csv: .*tx\.csv has no rows$"),
]


@pytest.mark.parametrize(("text", "columns", "error"), BAD)
def test_bad_transactions(tmp_path: Path, text: str, columns: dict, error: str) -> None:
    cols = {"customer": "cust", "date": "when", "amount": "value", **columns}
    with pytest.raises(ClvDataError, match=error):
        read_transactions(_write(tmp_path, text), calibration_end=END, **cols)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--calibration-end", "30/06/2024"], "error: calibration-end: '30/06/2024' is not a date"),
        (["--customer", "id"], "error: customer: column 'id' is not in"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], error: str) -> None:
    argv = _cli(_write(tmp_path, GOOD), tmp_path / "o.csv")
    for flag, value in zip(args[::2], args[1::2], strict=True):
        argv[argv.index(flag) + 1] = value
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(error)


def test_bgnbd_parameters_match_the_reference_on_cdnow() -> None:
    """../shared/data/README.md: lifetimes' BG/NBD on CDNOW to 1997-09-30 has r 0.243,
    alpha 30.9, a 0.793, b 2.426; our pymc-marketing MAP fit must give the same."""
    from training.clv_btyd import fit_btyd

    path = shared_file("cdnow/cdnow_sample.csv.gz")
    end = pd.Timestamp("1997-09-30")
    summary = summary_at(
        purchase_days(read_transactions(path, "customer_id", "date", "amount", end)), end
    )
    assert len(summary) == 2357
    params = fit_btyd(summary).params
    assert round(params["r"], 3) == 0.243
    assert round(params["alpha"], 1) == 30.9
    assert round(params["a"], 3) == 0.793
    assert round(params["b"], 3) == 2.426
    lifetimes = pytest.importorskip("lifetimes")
    ref = lifetimes.BetaGeoFitter().fit(summary["frequency"], summary["recency"], summary["T"])
    for key in ("r", "alpha", "a", "b"):
        assert params[key] == pytest.approx(ref.params_[key], rel=1e-3)


def test_short_history_leaves_bgnbd_alone_and_says_why() -> None:
    from training.clv import predict_clv

    tx = _population(n=400, days=45, seed=5)
    tx = tx.rename(columns={"cust": "customer_id", "when": "date", "value": "amount"})
    end = pd.Timestamp("2024-02-14")
    out, result, both = predict_clv(tx, end, 30)
    assert result.chosen == "btyd" and list(both) == ["btyd"]
    assert [v.model for v in result.validation] == ["btyd"]
    assert result.notes == [
        "lightgbm: under 56 days of history before 2024-01-17: not judged, BG/NBD predicts"
    ]
    assert len(out) == tx.loc[tx["date"] <= end, "customer_id"].nunique()


def test_clv_train_without_an_event_log_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["clv", "train", "--json"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: events: no event log in the home (run `nextbest features build` first)"
    )
