"""The uplift report: numbers from a world with known uplift, JSON = HTML, and a real browser
renders every chart without console errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs
from typer.testing import CliRunner

from experiments.report import ReportError, build_report
from experiments.report_charts import report_html
from nextbest.cli import app
from nextbest.settings import get_settings

# an empty home per test: decisions other tests left in the session's home must not appear
pytestmark = pytest.mark.usefixtures("private_home")

# campaign, offer, channel, customers, true conversion if treated / untreated
CAMPAIGNS = [
    ("basket_reminder", "data_addon", "email", 3000, 0.30, 0.21),
    ("upgrade_push", "device_upgrade", "sms", 2000, 0.08, 0.08),
    ("loyalty_web", "loyalty_reward", "web", 1500, 0.12, 0.15),
]
T0 = datetime(2026, 2, 1, tzinfo=UTC)


def make_world(folder: Path, seed: int = 5) -> Path:
    """A small world in the exposures.parquet contract (features/schema.py), 30% holdout."""
    rng = np.random.default_rng(seed)
    rows, people = [], []
    for camp, offer, channel, n, p_t, p_u in CAMPAIGNS:
        for i in range(n):
            person = f"p{len(people)}"
            people.append({"person_id": person, "plan": rng.choice(["prepaid", "postpaid_m"])})
            arm = "holdout" if rng.random() < 0.3 else "treatment"
            ts = T0 + timedelta(days=float(rng.uniform(0, 20)))
            conv = rng.random() < (p_t if arm == "treatment" else p_u)
            rows.append({
                "exposure_id": f"{camp}-{i}", "ts": ts, "campaign_id": camp, "offer_id": offer,
                "channel": channel, "arm": arm, "email": f"{person}@example.com", "phone": None,
                "true_person_id": person, "true_p_treated": p_t, "true_p_untreated": p_u,
                "converted": conv,
                "converted_at": ts + timedelta(days=float(rng.uniform(0, 30))) if conv else None,
            })  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / "exposures.parquet")
    pd.DataFrame(people).to_parquet(folder / "people.parquet")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("world"))


def test_report_numbers_match_known_uplift(world: Path) -> None:
    data = build_report(get_settings(), world)
    by_exp = {ln.key: ln for ln in data.lines if ln.dimension == "experiment"}
    assert set(by_exp) == {c[0] for c in CAMPAIGNS}
    for camp, _, _, n, p_t, p_u in CAMPAIGNS:
        c = by_exp[camp].conversion
        assert by_exp[camp].n_treated + by_exp[camp].n_holdout == n
        assert c.ci.low - 0.02 < p_t - p_u < c.ci.high + 0.02  # seeded: the truth is covered
    assert by_exp["basket_reminder"].conversion.significant
    assert not by_exp["upgrade_push"].conversion.significant
    verdict = by_exp["basket_reminder"].verdict
    assert re.match(
        r"basket_reminder \(10 GB data add-on, e-mail\): \+\d\.\d points of 30-day conversion, "
        r"95% CI \+\d\.\d to \+\d+\.\d; 2\d% of holdout customers converted on their own\. "
        r"A real gain\.",
        verdict,
    ), verdict
    dims = {ln.dimension for ln in data.lines}
    assert dims == {"experiment", "offer_id", "channel", "segment"}
    assert len(data.cumulative) == 3 and data.qini and "No uplift model" in data.qini_source
    assert data.qini[0].incremental[0] == 0.0
    assert "converted flag" in data.outcome_source


def test_nothing_to_report_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"no exposures.parquet in .*empty.*nextbest simulate"):
        build_report(get_settings(), tmp_path / "empty")


def test_report_shows_the_effective_held_out_share(world: Path, tmp_path: Path) -> None:
    """Both shares and what they add up to, per declared experiment, in the JSON and the page."""
    from experiments.report_charts import render_html
    from nextbest.settings import Settings

    settings = Settings(
        home=tmp_path,
        global_holdout_share=0.05,
        experiment_holdout_share=0.2,
        experiments=["spring"],
    )
    data = build_report(settings, world)
    assert data.model_dump()["holdouts"] == {
        "global_share": 0.05,
        "experiment_share": 0.2,
        "effective": {"nbo": 0.24, "spring": 0.24},
    }
    text = re.sub(r"\s+", " ", render_html(data))
    assert "Held out of the service's experiments: nbo 24.0%, spring 24.0% (the 5% global " in text
    assert "holdout plus 20% of the rest)" in text


def test_cli_report_writes_html_and_json(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--world", str(world), "--json"])
    assert result.exit_code == 0, result.stderr
    paths = json.loads(result.stdout.strip().splitlines()[-1])
    html = Path(paths["html"]).read_text()
    numbers = json.loads(Path(paths["json"]).read_text())
    plotly_js = get_plotlyjs()
    assert plotly_js in html  # plotly.js inline, once
    rest = html.replace(plotly_js, "")
    assert "<script src=" not in rest and "http" not in rest  # nothing else fetched
    for line in numbers["lines"]:  # the JSON's verdicts are the page's verdicts
        assert line["verdict"].replace("&", "&amp;") in html
    bad = CliRunner().invoke(app, ["report", "--out", str(out), "--world", str(tmp_path / "no")])
    assert bad.exit_code == 2 and "nothing to report" in bad.stderr


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(
                ["apt-get", "update"], check=True, capture_output=True, timeout=120, env=env
            )
            subprocess.run(["apt-get", "install", "-y", "chromium"], check=True,
                           capture_output=True, timeout=300, env=env)  # fmt: skip
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"chromium is not installed and apt-get could not install it: {exc}")
        exe = shutil.which("chromium")
    if not exe:
        pytest.skip("chromium is not installed and cannot be installed here (needs root + apt)")
    return exe


@pytest.mark.slow
def test_report_renders_in_headless_chromium(world: Path, tmp_path: Path) -> None:
    exe = _chromium()
    page = tmp_path / "report.html"
    page.write_text(report_html(get_settings(), world))
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=15000", "--window-size=1200,2400"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    status = re.search(r'<div id="render-status"([^>]*)>', dom.stdout)
    assert status, f"charts never finished rendering; stderr: {dom.stderr[-2000:]}"
    attrs = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', status.group(1)))
    errors = json.loads(attrs["data-errors"].replace("&quot;", '"'))
    assert errors == [], errors
    assert int(attrs["data-charts"]) >= 8  # 4 lift charts, 3 cumulative, Qini
    assert int(attrs["data-drawn"]) == int(attrs["data-charts"])
    assert "CONSOLE" not in dom.stderr or "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120)  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 20_000, "no screenshot written"
    print(f"screenshot: {shot}")


def test_report_from_ledger_and_world_with_ope(world: Path, tmp_path: Path) -> None:
    """A real SQLite ledger next to the world: both appear; candidate policies are estimated."""
    from sqlalchemy import insert

    from nextbest.db import engine_for
    from nextbest.settings import Settings
    from record.ledger import Ledger
    from record.tables import DecisionRow, OutcomeRow, decisions, outcomes

    settings = Settings(home=tmp_path / "home")
    ledger = Ledger(engine_for(settings.ledger_db_url))
    rng = np.random.default_rng(9)
    rewards, dec_rows, out_rows = [], [], []
    for i in range(400):
        arm = "holdout" if i % 5 == 0 else "treatment"
        offer = (
            None if arm == "holdout" else ("data_addon" if rng.random() < 0.5 else "family_plan")
        )
        dec_rows.append(DecisionRow(
            decision_id=f"d{i}", ts=T0 + timedelta(hours=i), customer_id=f"c{i}", channel="web",
            context={"segment": "postpaid_m"}, experiment="web_banner", arm=arm, offer_id=offer,
            propensity=None if offer is None else 0.5,
            probabilities={} if offer is None else {"data_addon": 0.5, "family_plan": 0.5},
            scores={"features": {"plan": "postpaid_m"}},  # what the bandit learns from
        ).model_dump())  # fmt: skip
        p = {"data_addon": 0.4, "family_plan": 0.2, None: 0.2}[offer]
        if rng.random() < p:  # a conversion reported later from the store, same customer
            out_rows.append(OutcomeRow(
                idempotency_key=f"k{i}", decision_id=f"d{i}", customer_id=f"c{i}",
                type="conversion", value=1.0, ts=T0 + timedelta(hours=i, days=2),
            ).model_dump())  # fmt: skip
            # the bandit's reward: the order's value less the offer's cost (family_plan: 25)
            rewards.append({"data_addon": 1.0, "family_plan": -24.0}.get(offer, 0.0))
    with ledger.engine.begin() as conn:  # one transaction: 400 synchronous commits are slow
        conn.execute(insert(decisions), dec_rows)
        conn.execute(insert(outcomes), out_rows)
    data = build_report(settings, world)
    assert any("decision ledger (400" in s for s in data.sources), data.sources
    banner = next(ln for ln in data.lines if ln.key == "web_banner")
    assert (banner.n_treated, banner.n_holdout) == (320, 80)
    by_policy = {(e.policy, e.estimator): e for e in data.ope}
    logged = by_policy[("logging policy", "ips")]
    assert logged.n == 320 and logged.value == pytest.approx(sum(rewards) / 320)
    best = by_policy[("always data_addon when allowed", "snips")]
    worst = by_policy[("always family_plan when allowed", "snips")]
    assert best.value > worst.value and best.ci_low < 0.4 < best.ci_high
    assert "IPS and SNIPS on 320 logged decisions" in data.ope_note
    assert "the bandit's spend reward, 30-day window" in data.ope_note


def test_report_ope_uses_the_bandits_reward_and_window(world: Path, tmp_path: Path) -> None:
    """Issue 12 item 4: the report's off-policy values are the bandit's rewards (window, cost,
    undelivered decisions left out), not every outcome value linked to a decision."""
    from nextbest.db import engine_for
    from nextbest.settings import Settings
    from record.ledger import Ledger
    from record.tables import DecisionRow, OutcomeRow
    from training.bandit_ledger import ledger_examples

    settings = Settings(home=tmp_path / "home")
    ledger = Ledger(engine_for(settings.ledger_db_url))
    probs = {"data_addon": 0.5, "family_plan": 0.5}
    for i in range(40):
        offer = "data_addon" if i % 2 else "family_plan"
        status = "cancelled" if i % 10 == 0 else "shown"
        ledger.record_decision(DecisionRow(
            decision_id=f"d{i}", ts=T0 + timedelta(hours=i), customer_id=f"c{i}", channel="web",
            experiment="web_banner", arm="treatment", offer_id=offer, propensity=0.5,
            probabilities=probs, scores={"features": {"plan": "postpaid_m"}}, status=status,
        ))  # fmt: skip
        late = i % 3 == 0  # a conversion 40 days on: outside the 30-day window
        ledger.record_outcome(OutcomeRow(
            idempotency_key=f"k{i}", decision_id=f"d{i}", customer_id=f"c{i}", type="conversion",
            value=30.0, ts=T0 + timedelta(hours=i, days=40 if late else 2),
        ))  # fmt: skip
    bandit = ledger_examples(settings)
    data = build_report(settings, world)
    logged = next(e for e in data.ope if (e.policy, e.estimator) == ("logging policy", "ips"))
    assert logged.value == pytest.approx(bandit["reward"].mean())
    assert logged.n == len(bandit) == 36  # the four cancelled messages are not learned


@pytest.mark.parametrize(
    ("treated", "holdout", "expected"),
    [
        ((60, 400), (20, 400), r"\+10\.0 points .* A real gain\.$"),
        ((21, 400), (20, 400), r"\+0\.2 points .* No effect distinguishable from zero yet\.$"),
        ((4, 30), (0, 30), r"Not conclusive yet: the test \(p = 0\.04\) and the interval disagree"),
        ((0, 50), (0, 50), r"^Offer: no conversions in either group: there is no variance"),
    ],
)
def test_verdict_says_what_the_numbers_say(
    treated: tuple[int, int], holdout: tuple[int, int], expected: str
) -> None:
    from estimation.uplift import compare
    from experiments.report import verdict

    def outcomes(k: int, n: int) -> np.ndarray:
        return np.r_[np.ones(k), np.zeros(n - k)]

    comp = compare("treatment", "holdout", outcomes(*treated), outcomes(*holdout), True)
    comp.p_adjusted, comp.significant = comp.p_value, (comp.p_value or 1) < 0.05
    assert re.search(expected, verdict("Offer", comp, 30)), verdict("Offer", comp, 30)


def test_report_skips_and_counts_absurd_ledger_rows(world: Path, tmp_path: Path) -> None:
    """Issue 15 item 3: rows from before the API bounded its input (an outcome dated 1497,
    values of 1e300 and infinity, a decision dated 1497) are skipped and counted; the ledger's
    other rows still make the report and the off-policy estimates they made before."""
    from sqlalchemy import insert

    from nextbest.db import engine_for
    from nextbest.settings import Settings
    from record.ledger import Ledger
    from record.tables import DecisionRow, OutcomeRow, decisions, outcomes
    from training.bandit_ledger import ledger_examples

    settings = Settings(home=tmp_path / "home")
    ledger = Ledger(engine_for(settings.ledger_db_url))
    probs = {"data_addon": 0.5, "family_plan": 0.5}
    for i in range(40):
        ledger.record_decision(DecisionRow(
            decision_id=f"d{i}", ts=T0 + timedelta(hours=i), customer_id=f"c{i}", channel="web",
            experiment="web_banner", arm="holdout" if i % 5 == 0 else "treatment",
            offer_id=None if i % 5 == 0 else ("data_addon" if i % 2 else "family_plan"),
            propensity=None if i % 5 == 0 else 0.5, probabilities={} if i % 5 == 0 else probs,
            scores={"features": {"plan": "postpaid_m"}},
        ))  # fmt: skip
        if i % 3 == 0:
            ledger.record_outcome(OutcomeRow(
                idempotency_key=f"k{i}", decision_id=f"d{i}", customer_id=f"c{i}",
                type="conversion", value=30.0, ts=T0 + timedelta(hours=i, days=2),
            ))  # fmt: skip
    clean = ledger_examples(settings)
    before = build_report(settings, world)
    bad = {"decision_id": "d1", "customer_id": "c1", "type": "conversion"}
    with ledger.engine.begin() as conn:  # written around the API, as an old ledger may hold
        conn.execute(insert(outcomes), [
            {**bad, "idempotency_key": "old", "value": 5.0, "ts": datetime(1497, 3, 1)},
            {**bad, "idempotency_key": "huge", "value": 1e300, "ts": T0 + timedelta(days=1)},
            {**bad, "idempotency_key": "inf", "value": float("inf"), "ts": T0 + timedelta(days=1)},
        ])  # fmt: skip
        row = DecisionRow(decision_id="d-old", ts=datetime(1497, 3, 1, tzinfo=UTC),
                          customer_id="c-old", channel="web", experiment="web_banner",
                          arm="treatment", offer_id="data_addon", propensity=0.5,
                          probabilities=probs, scores={})  # fmt: skip
        conn.execute(insert(decisions), [row.model_dump()])
    data = build_report(settings, world)
    skipped = (
        "rows skipped: 4 (decision time out of range: 1; outcome time out of range: 1; "
        "outcome value not a finite number in [0, 1e+06]: 2)"
    )
    assert f"decision ledger (40 experiment units; {skipped})" in data.sources, data.sources
    logged = next(e for e in data.ope if (e.policy, e.estimator) == ("logging policy", "ips"))
    assert logged.value == pytest.approx(clean["reward"].mean()) and logged.n == len(clean)
    assert f"Ledger {skipped}." in data.ope_note
    assert [ln.model_dump() for ln in data.lines] == [ln.model_dump() for ln in before.lines]
    assert skipped in report_html(settings, world)
    trained_on = ledger_examples(settings)  # training takes the same rows (record.attribution)
    assert trained_on["reward"].tolist() == clean["reward"].tolist()
    assert sum(trained_on.attrs["skipped"].values()) == 4


def test_report_breaks_lift_down_by_value_tier(world: Path, tmp_path: Path) -> None:
    """Units join the latest ``customer_value`` rows by customer id; each tier is a line."""
    from experiments.report import lines, with_value_tier
    from experiments.report_units import load_units
    from features.repo.data_sources import VALUE_PATH
    from nextbest.settings import Settings
    from training.clv_world import value_rows

    settings = Settings(home=tmp_path)
    units = load_units(settings, world)[0]  # no graph here: each e-mail is its own customer
    people = units["customer_id"].drop_duplicates().reset_index(drop=True)
    value = np.linspace(1000.0, 10.0, len(people))
    predictions = pd.DataFrame(
        {"customer_id": people, "expected_value": value, "expected_purchases": value / 100,
         "p_alive": 0.9}
    )  # fmt: skip
    path = settings.feature_dir / VALUE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    value_rows(predictions, pd.Timestamp("2026-03-01")).to_parquet(path)
    tiered = with_value_tier(units, settings)
    by_tier = {ln.key: ln for ln in lines(tiered, 30, 0.05) if ln.dimension == "value_tier"}
    assert set(by_tier) == {"top", "middle", "low"}
    assert sum(ln.n_treated + ln.n_holdout for ln in by_tier.values()) == len(units)
    top_share = (by_tier["top"].n_treated + by_tier["top"].n_holdout) / len(units)
    assert top_share == pytest.approx(0.2, abs=0.01)
