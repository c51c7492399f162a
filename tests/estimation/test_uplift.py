"""Uplift statistics against statsmodels/scipy, Hillstrom, known truth and degenerate input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from estimation.uplift import UpliftError, analyze, compare
from estimation.uplift_stats import holm, proportion_diff, sequential_halfwidth
from experiments.exports import analyze_export
from nextbest.cli import app
from tests.conftest import shared_file

sm_prop = pytest.importorskip("statsmodels.stats.proportion")
sm_multi = pytest.importorskip("statsmodels.stats.multitest")


@pytest.fixture(scope="module")
def hillstrom() -> Path:
    return shared_file("hillstrom.csv.gz")


def test_hillstrom_visit_matches_statsmodels(hillstrom: Path) -> None:
    res = analyze_export(hillstrom, "segment", "visit", "No E-Mail")
    assert res.kind == "binary" and res.control == "No E-Mail"
    women = next(c for c in res.comparisons if c.arm == "Womens E-Mail")
    x_t, n_t, x_c, n_c = 3238, 21387, 2262, 21306
    assert (women.treated.total, women.treated.n, women.baseline.total, women.baseline.n) == (
        x_t, n_t, x_c, n_c,
    )  # fmt: skip
    wald = sm_prop.test_proportions_2indep(x_t, n_t, x_c, n_c, compare="diff", method="wald")
    low, high = sm_prop.confint_proportions_2indep(
        x_t, n_t, x_c, n_c, compare="diff", method="wald"
    )
    z_pooled, p_pooled = sm_prop.proportions_ztest([x_t, x_c], [n_t, n_c])
    assert women.lift == pytest.approx(wald.diff, abs=1e-6)
    assert (women.ci.low, women.ci.high) == (
        pytest.approx(low, abs=1e-6),
        pytest.approx(high, abs=1e-6),
    )
    assert women.wald_z == pytest.approx(wald.statistic, abs=1e-6)
    assert women.statistic == pytest.approx(z_pooled, abs=1e-6)
    assert women.p_value == pytest.approx(p_pooled, rel=1e-6)
    # the figures printed in ../shared/data/README.md
    assert round(women.lift, 5) == 0.04523
    assert (round(women.ci.low, 5), round(women.ci.high, 5)) == (0.03889, 0.05157)
    assert round(women.statistic, 3) == 13.949
    # relative lift: delta method agrees with the simulated ratio spread within 2%
    assert women.relative_lift == pytest.approx((x_t / n_t) / (x_c / n_c) - 1, abs=1e-12)
    ratio_sd = (women.relative_ci.high - women.relative_ci.low) / (2 * 1.959964)
    rng = np.random.default_rng(0)
    draws = rng.binomial(n_t, x_t / n_t, 20000) / n_t / (rng.binomial(n_c, x_c / n_c, 20000) / n_c)
    assert ratio_sd == pytest.approx(draws.std(), rel=0.02)


def test_hillstrom_spend_welch_and_cuped(hillstrom: Path) -> None:
    df = pd.read_csv(hillstrom)
    res = analyze_export(hillstrom, "segment", "spend", "No E-Mail", covariate="history")
    assert res.kind == "numeric"
    for comp in res.comparisons:
        a = df.loc[df.segment == comp.arm, "spend"]
        b = df.loc[df.segment == "No E-Mail", "spend"]
        ref = stats.ttest_ind(a, b, equal_var=False)
        ci = ref.confidence_interval(0.95)
        assert comp.test == "Welch t"
        assert comp.statistic == pytest.approx(ref.statistic, rel=1e-9)
        assert comp.p_value == pytest.approx(ref.pvalue, rel=1e-6)
        assert comp.df == pytest.approx(ref.df, rel=1e-9)
        assert (comp.ci.low, comp.ci.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
        assert comp.cuped.variance_reduction > 0
        se = (comp.ci.high - comp.ci.low) / (2 * 1.96)
        assert abs(comp.cuped.lift - comp.lift) < 0.5 * se  # same estimate, smaller interval
        assert comp.cuped.ci.high - comp.cuped.ci.low < comp.ci.high - comp.ci.low
    visit = analyze_export(hillstrom, "segment", "visit", "No E-Mail", covariate="history")
    assert all(c.cuped.variance_reduction > 0 for c in visit.comparisons)


def test_cuped_unbiased_with_known_effect() -> None:
    """Many seeded experiments with a true lift of 0.3: CUPED and plain agree on average,
    CUPED's spread is smaller by about the covariate's R^2 (0.64 here)."""
    rng = np.random.default_rng(1)
    plain, adjusted, reductions = [], [], []
    for _ in range(200):
        x = rng.normal(0, 1, 400)
        arm = np.where(rng.random(400) < 0.5, "t", "c")
        y = 0.8 * x + rng.normal(0, 0.6, 400) + np.where(arm == "t", 0.3, 0.0)
        res = analyze(pd.DataFrame({"arm": arm, "y": y, "x": x}), "arm", "y", "c", "x")
        plain.append(res.comparisons[0].lift)
        adjusted.append(res.comparisons[0].cuped.lift)
        reductions.append(res.comparisons[0].cuped.variance_reduction)
    assert np.mean(adjusted) == pytest.approx(0.3, abs=0.01)
    assert np.mean(plain) == pytest.approx(0.3, abs=0.02)
    assert np.mean(reductions) == pytest.approx(0.64, abs=0.03)
    assert np.std(adjusted) < 0.7 * np.std(plain)


def test_holm_matches_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    ref = sm_multi.multipletests(p, method="holm")[1]
    assert holm(p) == pytest.approx(list(ref))
    assert holm([0.02, None, 0.01]) == [0.02, None, pytest.approx(0.02)]


def test_sequential_interval_valid_under_peeking() -> None:
    """A/A tests looked at 20 times: the fixed interval excludes 0 at some look far more often
    than 5%; the always-valid one at most about 5%."""
    rng = np.random.default_rng(2)
    sims, looks = 1000, np.linspace(200, 4000, 20).astype(int)
    sums = {}
    for arm in ("t", "c"):
        y = rng.normal(0, 1, (sims, looks[-1]))
        sums[arm] = (y.cumsum(1)[:, looks - 1], (y**2).cumsum(1)[:, looks - 1])
    (s_t, q_t), (s_c, q_c) = sums["t"], sums["c"]
    diff = s_t / looks - s_c / looks
    var_t, var_c = (q_t - s_t**2 / looks) / (looks - 1), (q_c - s_c**2 / looks) / (looks - 1)
    se = np.sqrt(var_t / looks + var_c / looks)
    fixed_hit = (np.abs(diff) > 1.96 * se).any(1)
    seq_hit = (np.abs(diff) > sequential_halfwidth(se, 2 * looks)).any(1)
    assert fixed_hit.mean() > 0.15
    assert seq_hit.mean() <= 0.06


def _frame(arms, ys, xs=None) -> pd.DataFrame:
    df = pd.DataFrame({"arm": arms, "y": np.asarray(ys, float)})
    if xs is not None:
        df["x"] = np.asarray(xs, float)
    return df


@pytest.mark.parametrize(
    ("frame", "control", "match"),
    [
        (_frame(["c", "c"], [0, 1]), "c", r"column 'arm' has only one arm \('c'\)"),
        (_frame(["c", "t"], [0, 1]), "h", r"control label 'h' not found; labels: \['c', 't'\]"),
    ],
)
def test_bad_experiments_raise(frame: pd.DataFrame, control: str, match: str) -> None:
    with pytest.raises(UpliftError, match=match):
        analyze(frame, "arm", "y", control)


@pytest.mark.parametrize(
    ("arms", "ys", "note"),
    [
        (["c"] * 5 + ["t"] * 5, [0] * 10, "no conversions in either group"),
        (["c"] * 5 + ["t"] * 5, [3.5] * 10, r"outcome is constant \(3.5 for every customer\)"),
        (["c"] * 5 + ["t"], [1.0, 2, 3, 4, 5, 7.5], "arm 't' has 1 customer"),
        (["c"] * 4 + ["t"] * 4, [0, 0, 0, 0, 1, 0, 1, 0], "control 'c' has a mean of 0"),
    ],
)
def test_degenerate_inputs_give_a_note_not_nan(arms, ys, note) -> None:
    comp = analyze(_frame(arms, ys), "arm", "y", "c").comparisons[0]
    assert comp.note is not None and re.search(note, comp.note), comp.note
    dumped = json.dumps(comp.model_dump())
    assert "NaN" not in dumped and "Infinity" not in dumped
    assert not comp.significant


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "export.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "args", "match"),
    [
        (
            "arm,y\nc,1\nt,0\n",
            ["--outcome", "conv"],
            r"column 'conv' is missing; columns found: \['arm', 'y'\]",
        ),
        (
            "arm,y\nc,1\nt,0\n",
            ["--outcome", "y", "--control", "z"],
            r"control label 'z' not found; labels: \['c', 't'\]",
        ),
        (
            "arm,y\nc,1\nt,maybe\nt,1\n",
            ["--outcome", "y"],
            r"column 'y' has a non-numeric value 'maybe' at line 3",
        ),
        ("arm,y\nc,1\nt,\n", ["--outcome", "y"], r"column 'y' has an empty value at line 3"),
        (
            "arm,y\nA,1\nB,0\n",
            ["--outcome", "y"],
            r"none of the labels \['A', 'B'\] reads as a control",
        ),
        ("arm,y\n", ["--outcome", "y"], "header but no rows"),
    ],
)
def test_cli_errors_name_column_and_reason(
    tmp_path: Path, text: str, args: list[str], match: str
) -> None:
    path = _write(tmp_path, text)
    result = CliRunner().invoke(
        app, ["uplift", "analyze", "--csv", str(path), "--arm", "arm", *args]
    )
    assert result.exit_code == 2
    assert re.search(match, result.stderr), result.stderr


def test_cli_messy_labels_and_yes_no(tmp_path: Path) -> None:
    rows = ["arm,bought,pre"] + [
        f" holdout ,{'Yes' if i % 4 == 0 else 'no'},{i}" for i in range(40)
    ]
    rows += [f"treatment  ,{'TRUE' if i % 2 == 0 else 'False'},{i}" for i in range(40)]
    path = _write(tmp_path, "\n".join(rows) + "\n")
    result = CliRunner().invoke(
        app,
        ["uplift", "analyze", "--csv", str(path), "--arm", "arm", "--outcome", "bought",
         "--covariate", "pre", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["control"] == "holdout" and out["kind"] == "binary"
    (comp,) = out["comparisons"]
    assert comp["arm"] == "treatment"
    assert comp["lift"] == pytest.approx(0.5 - 0.25)
    assert comp["treated"]["n"] == 40 and comp["baseline"]["total"] == 10


def test_coverage_benchmark_small_version() -> None:
    """400 simulated experiments: coverage in a band a wrong interval cannot reach."""
    from benchmarks.uplift_coverage import _experiments, run

    conv = run(experiments=400, seed=3)["conversion"]
    assert 0.92 <= conv["coverage"] <= 0.98, conv
    assert 0.92 <= conv["relative_coverage"] <= 0.98, conv
    assert conv["false_positive_rate"] <= 0.10, conv  # about 130 A/A tests
    assert conv["peeking_sequential_coverage"] >= 0.95 > conv["peeking_fixed_coverage"], conv
    # the band has teeth: the same experiments with a 2x too narrow interval fall far outside it
    rng = np.random.default_rng(3)
    e = _experiments(rng, 400)
    x_t, x_c = rng.binomial(e["n_t"], e["p_t"]), rng.binomial(e["n_c"], e["p_c"])
    r = proportion_diff(x_t, e["n_t"], x_c, e["n_c"])
    missed = np.abs(r["diff"] - (e["p_t"] - e["p_c"]))
    assert 0.92 <= (missed <= 1.96 * r["se"]).mean() <= 0.98
    assert (missed <= 0.98 * r["se"]).mean() < 0.8


def test_empty_arm_is_named() -> None:
    with pytest.raises(UpliftError, match=r"arm 'email' is empty \(0 customers\)"):
        compare("email", "holdout", np.array([]), np.array([0.0, 1.0]), binary=True)


def test_few_conversions_get_the_agresti_caffo_interval() -> None:
    """0 of 20 holdout customers converted: Wald would claim certainty on that side."""
    frame = _frame(["t"] * 60 + ["c"] * 20, [1] * 9 + [0] * 51 + [0] * 20)
    comp = analyze(frame, "arm", "y", "c").comparisons[0]
    low, high = sm_prop.confint_proportions_2indep(
        9, 60, 0, 20, compare="diff", method="agresti-caffo"
    )
    assert comp.interval == "agresti-caffo" and comp.lift == pytest.approx(0.15)
    assert (comp.ci.low, comp.ci.high) == (pytest.approx(low), pytest.approx(high))
    assert comp.ci.low < 0  # Wald's [0.06, 0.24] would have called this a sure gain
