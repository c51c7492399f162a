"""Journey measurement: the statistics on hand-made frames with known answers, the funnel, the
path experiment, the loader on a real SQLite ledger, the report's Journeys section."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert

from estimation.uplift import compare
from experiments.journeys import (
    STEP_COLUMNS,
    UNIT_COLUMNS,
    evaluate,
    funnel,
    journey_frames,
    paths,
)
from journeys.definition import Journey

sm_prop = pytest.importorskip("statsmodels.stats.proportion")

T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)


def make_units(journey: str, arms: dict[str, tuple[int, int]], path: dict | None = None):
    """``arms``: arm -> (instances, converted); the first ``converted`` of each arm convert.
    ``path``: path name -> (instances, converted) among the treated, in order."""
    rows = []
    branch = [p for p, (n, _) in (path or {}).items() for _ in range(n)]
    won = {p: x for p, (_, x) in (path or {}).items()}
    for arm, (n, x) in arms.items():
        for k in range(n):
            p = branch[k] if arm == "treatment" and k < len(branch) else None
            if p is not None:
                conv = won[p] > 0
                won[p] -= conv
            else:
                conv = k < x
            rows.append({
                "journey": journey, "version": "v1", "instance_id": f"{journey}-{arm}-{k}",
                "customer_id": f"c{k}", "arm": arm, "path": p, "entered_at": T0,
                "converted": conv, "goal_at": T0 + timedelta(days=2) if conv else None,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=UNIT_COLUMNS)


NO_STEPS = pd.DataFrame(columns=STEP_COLUMNS)


def test_customers_who_entered_several_times_widen_the_interval() -> None:
    """Four entries per customer with one outcome each: four times the information claimed,
    so the interval is widened by about sqrt(4), and the lift itself is unchanged."""
    once = make_units("basket", {"treatment": (400, 100), "holdout": (200, 40)})
    (single,) = evaluate(once, NO_STEPS)
    repeated = pd.concat([once.assign(instance_id=once.instance_id + f"-{k}") for k in range(4)])
    (r,) = evaluate(repeated, NO_STEPS)
    assert r.lift.lift == pytest.approx(single.lift.lift)
    half = lambda x: x.lift.ci.high - x.lift.lift  # noqa: E731
    y = {a: repeated[repeated.arm == a].converted.to_numpy(float) for a in ("treatment", "holdout")}
    naive = compare("t", "h", y["treatment"], y["holdout"], True)
    assert half(r) / (naive.ci.high - naive.lift) == pytest.approx(2.0, rel=0.01)
    assert half(r) == pytest.approx(half(single), rel=0.01)  # what one entry each would say
    assert "entered more than once" in r.lift.note and single.lift.note is None


def test_lift_and_interval_are_the_engines_and_match_statsmodels() -> None:
    units = make_units("basket", {"treatment": (1000, 250), "holdout": (400, 80)})
    (r,) = evaluate(units, NO_STEPS)
    assert (r.treated.entered, r.treated.converted, r.treated.rate) == (1000, 250, 0.25)
    assert (r.holdout.entered, r.holdout.converted, r.holdout.rate) == (400, 80, 0.2)
    assert r.lift.lift == pytest.approx(0.05, abs=1e-12)
    assert r.lift.interval == "wald" and r.note == ""
    # by hand: 0.05 +- 1.959964 * sqrt(.25 * .75 / 1000 + .2 * .8 / 400)
    assert r.lift.ci.low == pytest.approx(0.002494, abs=1e-6)
    assert r.lift.ci.high == pytest.approx(0.097506, abs=1e-6)
    low, high = sm_prop.confint_proportions_2indep(250, 1000, 80, 400, method="wald")
    assert (r.lift.ci.low, r.lift.ci.high) == (pytest.approx(low), pytest.approx(high))
    engine = compare("treatment", "holdout", units[units.arm == "treatment"].converted.to_numpy(
        float), units[units.arm == "holdout"].converted.to_numpy(float), True)  # fmt: skip
    assert r.lift.model_dump(exclude={"p_adjusted", "significant"}) == engine.model_dump(
        exclude={"p_adjusted", "significant"}
    )
    assert r.measured == (r.lift.lift, r.lift.ci.low, r.lift.ci.high)
    assert r.lift.significant and r.lift.p_adjusted == r.lift.p_value < 0.05


def test_few_conversions_get_the_engines_agresti_caffo_interval() -> None:
    units = make_units("winback", {"treatment": (200, 6), "holdout": (50, 0)})
    (r,) = evaluate(units, NO_STEPS)
    assert r.lift.interval == "agresti-caffo"
    assert r.lift.lift == pytest.approx(0.03)
    a_t, a_c = 7 / 202, 1 / 52  # one success and one failure added to each group
    half = 1.959964 * np.sqrt(a_t * (1 - a_t) / 202 + a_c * (1 - a_c) / 52)
    assert r.lift.ci.low == pytest.approx(a_t - a_c - half, abs=1e-6)
    assert r.lift.ci.high == pytest.approx(a_t - a_c + half, abs=1e-6)


@pytest.mark.parametrize(
    ("arms", "note"),
    [
        ({"treatment": (30, 3)}, "no holdout instances: lift cannot be measured"),
        ({"holdout": (30, 3)}, "no treatment instances: lift cannot be measured"),
        (
            {"treatment": (30, 0), "holdout": (10, 0)},
            "no conversions in either group: there is no variance to test",
        ),
    ],
)
def test_a_lift_that_cannot_be_measured_says_why(arms, note) -> None:
    (r,) = evaluate(make_units("onboarding", arms), NO_STEPS)
    assert r.note == note and r.measured is None


def test_journeys_are_measured_apart() -> None:
    units = pd.concat([
        make_units("a", {"treatment": (100, 30), "holdout": (100, 20)}),
        make_units("b", {"treatment": (100, 10), "holdout": (100, 10)}),
    ])  # fmt: skip
    a, b = evaluate(units, NO_STEPS)
    assert (a.journey, b.journey) == ("a", "b")
    assert a.lift.lift == pytest.approx(0.1) and b.lift.lift == pytest.approx(0.0)
    assert evaluate(units.iloc[:0], NO_STEPS) == []


def _step(instance: str, step: str, channel: str, *flags: str) -> dict:
    row = {"instance_id": instance, "journey": "basket", "step_id": step, "channel": channel}
    return row | {s: s in flags for s in ("sent", "delivered", "opened", "clicked")}


def test_funnel_counts_instances_per_step_and_channel_and_converted_among_them() -> None:
    units = make_units("basket", {"treatment": (6, 2), "holdout": (4, 1)})
    t = [f"basket-treatment-{k}" for k in range(6)]  # t[0] and t[1] converted
    steps = pd.DataFrame([
        _step(t[0], "email", "email", "sent", "delivered", "opened", "clicked"),
        _step(t[1], "email", "email", "sent", "delivered", "opened"),
        _step(t[2], "email", "email", "sent", "delivered"),
        _step(t[3], "email", "email", "sent"),  # bounced
        _step(t[2], "sms", "sms", "sent", "delivered"),
        _step(t[3], "sms", "sms", "sent", "delivered", "clicked"),
        _step(t[0], "banner", "web", "sent", "delivered"),
        _step(t[1], "banner", "app", "sent"),
        # a second pass through the same step (a loop with a wait) counts the instance once
        _step(t[3], "sms", "sms", "sent"),
    ])  # fmt: skip
    order = ["banner", "wait_hour", "email", "opened", "sms", "done"]
    got = {(f.step_id, f.channel): f.model_dump() for f in funnel(units, steps, order)}
    assert list(got) == [("banner", "app"), ("banner", "web"), ("email", "email"), ("sms", "sms")]
    assert got[("email", "email")] == {
        "step_id": "email", "channel": "email", "sent": 4, "delivered": 3, "opened": 2,
        "clicked": 1, "converted_sent": 2, "converted_delivered": 2, "converted_opened": 2,
        "converted_clicked": 1,
    }  # fmt: skip
    sms = got[("sms", "sms")]
    assert (sms["sent"], sms["delivered"], sms["clicked"], sms["converted_sent"]) == (2, 2, 1, 0)
    assert (got[("banner", "web")]["delivered"], got[("banner", "app")]["delivered"]) == (1, 0)
    assert got[("banner", "web")]["converted_delivered"] == 1
    (r,) = evaluate(units, steps)
    assert [f.step_id for f in r.steps] == ["email", "sms", "banner", "banner"]  # first seen


def test_path_experiment_compares_each_branch_with_the_reference() -> None:
    path = {"email_first": (300, 60), "sms_first": (300, 90), "banner_only": (200, 30)}
    units = make_units("basket", {"treatment": (900, 0), "holdout": (300, 45)}, path)
    treated = units[units.arm == "treatment"]
    assert treated.path.isna().sum() == 100  # exited before the split
    ref, *others = paths(treated, reference="email_first")
    assert (ref.path, ref.entered, ref.converted, ref.rate) == ("email_first", 300, 60, 0.2)
    assert ref.versus is None and ref.difference is None
    by = {p.path: p for p in others}
    assert [p.path for p in others] == ["banner_only", "sms_first"]
    sms = by["sms_first"].difference
    assert by["sms_first"].versus == "email_first"
    assert sms.lift == pytest.approx(0.1) and by["banner_only"].difference.lift == pytest.approx(
        -0.05
    )
    low, high = sm_prop.confint_proportions_2indep(90, 300, 60, 300, method="wald")
    assert (sms.ci.low, sms.ci.high) == (pytest.approx(low), pytest.approx(high))
    p = sorted([sms.p_value, by["banner_only"].difference.p_value])
    assert sorted([sms.p_adjusted, by["banner_only"].difference.p_adjusted]) == pytest.approx(
        [2 * p[0], max(2 * p[0], p[1])]
    )  # Holm over two comparisons
    # without a reference (no definition), the first branch by name
    assert paths(treated)[0].path == "banner_only"
    assert paths(treated.assign(path=None)) == []


def test_definitions_order_steps_and_choose_the_reference_path() -> None:
    journey = Journey.model_validate({
        "name": "basket", "offers": ["data_addon"],
        "entry": {"type": "intent", "event": "basket_add"},
        "steps": [
            {"id": "split", "type": "random_split", "branches": [
                {"name": "sms_first", "share": 0.5, "next": "sms"},
                {"name": "email_first", "share": 0.5, "next": "email"}]},
            {"id": "sms", "type": "message", "channel": "sms"},
            {"id": "email", "type": "message", "channel": "email"},
        ],
    })  # fmt: skip
    path = {"email_first": (100, 10), "sms_first": (100, 20)}
    units = make_units("basket", {"treatment": (200, 0), "holdout": (100, 10)}, path)
    steps = pd.DataFrame([_step("basket-treatment-150", "sms", "sms", "sent"),
                          _step("basket-treatment-0", "email", "email", "sent")])  # fmt: skip
    (r,) = evaluate(units, steps, {"basket": journey})
    assert [f.step_id for f in r.steps] == ["sms", "email"]
    assert [p.path for p in r.paths] == ["sms_first", "email_first"]
    assert r.paths[1].difference.lift == pytest.approx(-0.1)


# --- the loader on a real ledger database -------------------------------------------------------
EXAMPLE = Path(__file__).resolve().parents[2] / "journeys" / "examples" / "abandoned_basket.yaml"


def _definition(within: str) -> dict:
    import yaml

    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["goal"]["within"] = within
    return Journey.model_validate(raw).model_dump(mode="json")


def _decision(decision_id: str, status: str, channel: str) -> dict:
    return {
        "decision_id": decision_id, "ts": T0, "customer_id": "c1", "channel": channel,
        "context": {}, "experiment": "journey:abandoned_basket", "arm": "treatment",
        "offer_id": "data_addon", "propensity": 1.0, "probabilities": {}, "scores": {},
        "model_versions": {}, "fallback": False, "reason": "", "status": status,
    }  # fmt: skip


def fill_ledger(engine) -> None:
    """Two versions (30-day and 7-day goals), instances at and around the window's edges, and
    message steps whose delivery, opens and clicks the other tables record."""
    from journeys.state import journey_instances, journey_steps, journey_versions
    from nextbest.db import create_tables
    from record.tables import decisions, metadata, outbox, outcomes

    create_tables(engine, metadata)
    day = timedelta(days=1)
    instances = [  # id, version, arm, path, goal_at
        ("i1", "v30", "treatment", "email_first", T0 + 10 * day),
        ("i2", "v30", "treatment", "sms_first", T0 + 30 * day + timedelta(seconds=1)),
        ("i3", "v30", "holdout", None, T0 + 30 * day),  # on the edge: inside
        ("i4", "v30", "holdout", None, None),
        ("i5", "v7", "treatment", None, T0 + 10 * day),  # outside its version's 7 days
        ("i6", "v7", "treatment", None, T0 - timedelta(hours=1)),  # before entry
    ]
    steps = [  # instance, seq, step, result, channel, decision, message
        ("i1", 1, "banner", "banner", "web", "d1", None),
        ("i1", 2, "wait_hour", "waited", None, None, None),
        ("i1", 3, "email", "sent", "email", "d2", "m2"),
        ("i1", 4, "sms", "sent", "sms", "d3", "m3"),
        ("i2", 1, "banner", "banner", "web", "d4", None),
        ("i2", 2, "email", "sent", "email", "d5", "m5"),
        ("i5", 1, "email", "skipped", "email", None, None),
    ]
    with engine.begin() as conn:
        conn.execute(insert(journey_versions), [
            {"journey": "abandoned_basket", "version": v, "definition": _definition(w),
             "created_at": T0 - timedelta(days=k)} for k, (v, w) in enumerate(
                [("v30", "30d"), ("v7", "7d")])
        ])  # fmt: skip
        conn.execute(insert(journey_instances), [
            {"instance_id": i, "journey": "abandoned_basket", "version": v, "customer_id": f"c{i}",
             "arm": arm, "path": path, "status": "holdout" if arm == "holdout" else "completed",
             "step_id": None, "step_seq": 0, "entered_at": T0, "goal_at": goal, "context": {}}
            for i, v, arm, path, goal in instances
        ])  # fmt: skip
        conn.execute(insert(journey_steps), [
            {"instance_id": i, "seq": q, "step_id": s, "ts": T0, "result": r, "channel": ch,
             "decision_id": d, "message_id": m} for i, q, s, r, ch, d, m in steps
        ])  # fmt: skip
        conn.execute(insert(decisions), [
            _decision("d1", "shown", "web"), _decision("d2", "delivered", "email"),
            _decision("d3", "cancelled", "sms"), _decision("d4", "pending", "web"),
            _decision("d5", "sent", "email"),
        ])  # fmt: skip
        conn.execute(insert(outbox), [
            {"message_id": m, "created_at": T0, "customer_id": "c1", "channel": ch,
             "decision_id": d, "trigger": "journey", "payload": {}, "status": st}
            for m, ch, d, st in [("m2", "email", "d2", "delivered"),
                                 ("m3", "sms", "d3", "cancelled"),
                                 ("m5", "email", "d5", "delivered")]
        ])  # fmt: skip
        conn.execute(insert(outcomes), [
            {"idempotency_key": k, "decision_id": d, "customer_id": "c1", "type": t,
             "value": 1.0, "ts": T0} for k, d, t in [("o1", "d2", "open"), ("o2", "d2", "click"),
                                                       ("o3", "d5", "open"), ("o4", "d1", "click")]
        ])  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_engine(request, tmp_path: Path):
    from nextbest.db import engine_for

    if request.param == "sqlite":
        yield engine_for(f"sqlite:///{tmp_path / 'ledger.db'}")
    else:
        url = request.getfixturevalue("pg_url")
        yield engine_for(url.replace("://", "+psycopg://", 1))


def test_loader_builds_the_frames_from_the_ledger(ledger_engine) -> None:
    fill_ledger(ledger_engine)
    units, steps = journey_frames(ledger_engine)
    assert list(units.columns) == UNIT_COLUMNS and list(steps.columns) == STEP_COLUMNS
    units = units.set_index("instance_id")
    assert units["converted"].to_dict() == {
        "i1": True, "i2": False, "i3": True, "i4": False, "i5": False, "i6": False,
    }  # fmt: skip
    assert str(units["entered_at"].dt.tz) == "UTC"
    assert units.loc["i1", "entered_at"] == pd.Timestamp(T0)
    assert units.loc["i2", "path"] == "sms_first" and units.loc["i3", "arm"] == "holdout"
    flags = {
        (r.instance_id, r.step_id): (r.channel, r.sent, r.delivered, r.opened, r.clicked)
        for r in steps.itertuples()
    }
    assert flags == {
        ("i1", "banner"): ("web", True, True, False, True),  # shown by /decide, then clicked
        ("i1", "email"): ("email", True, True, True, True),
        ("i1", "sms"): ("sms", True, False, False, False),  # cancelled: not delivered
        ("i2", "banner"): ("web", True, False, False, False),  # not shown yet
        ("i2", "email"): ("email", True, True, True, False),  # the outbox says delivered
    }
    (r,) = evaluate(units.reset_index(), steps)
    assert (r.treated.entered, r.treated.converted, r.holdout.entered, r.holdout.converted) == (
        4, 1, 2, 1,
    )  # fmt: skip
    assert r.versions == ["v30", "v7"]
    email = next(f for f in r.steps if f.step_id == "email")
    assert (email.sent, email.delivered, email.opened, email.clicked) == (2, 2, 2, 1)
    assert (email.converted_sent, email.converted_clicked) == (1, 1)


def test_loader_on_a_ledger_without_journeys(tmp_path: Path) -> None:
    from nextbest.db import engine_for

    units, steps = journey_frames(engine_for(f"sqlite:///{tmp_path / 'empty.db'}"))
    assert units.empty and steps.empty and list(units.columns) == UNIT_COLUMNS
    assert evaluate(units, steps) == []


# --- the report's Journeys section ------------------------------------------------------------
def test_report_has_a_journeys_section_with_the_same_numbers_as_its_json(tmp_path: Path) -> None:
    import json
    import re

    from experiments.report import build_report
    from experiments.report_charts import figures, render_html
    from nextbest.db import engine_for
    from nextbest.settings import Settings
    from tests.experiments.test_report import make_world

    world = make_world(tmp_path / "world")
    settings = Settings(home=tmp_path / "home")
    fill_ledger(engine_for(settings.ledger_db_url))
    data = build_report(settings, world)
    (j,) = data.journeys
    assert (j.journey, j.window_days, j.treated.entered, j.holdout.entered) == (
        "abandoned_basket", 30, 4, 2,
    )  # fmt: skip
    assert [f.step_id for f in j.steps] == ["banner", "email", "sms"]  # the file's order
    assert [p.path for p in j.paths] == ["email_first", "sms_first"]
    assert j.verdict.startswith("abandoned_basket: -25.0 points of 30-day conversion, 95% CI")
    assert "1 journeys, 6 instances" in data.journeys_note
    dumped = json.loads(data.model_dump_json())["journeys"][0]
    assert dumped["lift"]["lift"] == pytest.approx(-0.25) and dumped["steps"][1]["opened"] == 2
    sections = [f["section"] for f in figures(data)]
    assert sections.count("journeys") == 1 and "journey:abandoned_basket" in sections
    html = re.sub(r"\s+", " ", render_html(data))
    assert '<h3 id="journey-abandoned_basket">abandoned_basket</h3>' in html
    assert "<td>treated</td><td>4</td><td>1</td> <td>25.0%</td>" in html
    assert "<td>holdout</td><td>2</td><td>1</td> <td>50.0%</td>" in html
    assert "<td>email (email)</td><td>2</td><td>2</td> <td>2</td><td>1</td>" in html
    assert "<td>email_first (reference)</td>" in html
    assert j.verdict in html

    lone = evaluate(make_units("lone", {"treatment": (30, 3)}), NO_STEPS)  # no holdout at all
    html = re.sub(r"\s+", " ", render_html(data.model_copy(update={"journeys": lone})))
    assert '<td rowspan="2" colspan="4">no holdout instances: lift cannot be measured</td>' in html

    quiet = build_report(Settings(home=tmp_path / "quiet"), world)
    assert quiet.journeys == []
    assert quiet.journeys_note == "No journey ran: there is no decision ledger yet."
    html = render_html(quiet)
    assert "<h2>Journeys</h2>" in html and "No journey ran" in html
    assert not [f for f in figures(quiet) if f["section"].startswith("journey")]


# --- evaluate and the coverage benchmark ------------------------------------------------------
def test_coverage_counts_the_worlds_whose_interval_holds_the_truth() -> None:
    from benchmarks.journey_coverage import JourneyLift, coverage

    def lift(m, lo, hi, truth=0.05):  # noqa: ANN001, ANN202
        return JourneyLift(measured_lift=m, ci_low=lo, ci_high=hi, true_lift=truth,
                           n_treated=400, n_holdout=100)  # fmt: skip

    per = {
        "basket": [lift(0.04, 0.01, 0.07), lift(0.09, 0.06, 0.12), lift(0.05, 0.05, 0.05)],
        "empty": [lift(None, None, None, truth=0.0)],  # no interval: not covered
    }
    got = coverage(per, worlds=3)
    assert got["basket"] == {
        "covered": 2, "worlds": 3, "measured": 3, "mean_ci_width": pytest.approx(0.04),
        "mean_true_lift": pytest.approx(0.05), "mean_measured_lift": pytest.approx(0.06),
        "mean_n_treated": 400, "mean_n_holdout": 100,
    }  # fmt: skip
    assert (got["empty"]["covered"], got["empty"]["measured"]) == (0, 0)
    assert got["empty"]["mean_ci_width"] is None


def test_evaluate_prints_each_journeys_lift_interval_and_truth(private_home: Path) -> None:
    """The last line's exact shape, and its figures recomputed from the simulator's own run."""
    import json

    import yaml
    from typer.testing import CliRunner

    from nextbest.cli import app
    from simulator.journey_sim import simulate_journeys
    from simulator.world import build_world

    args = ["journeys", "evaluate", "--customers", "500", "--days", "30", "--seed", "3", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    shipped = sorted(EXAMPLE.parent.glob("*.yaml"))
    journeys = [Journey.model_validate(yaml.safe_load(p.read_text())) for p in shipped]
    assert list(got) == ["journeys"] and sorted(got["journeys"]) == sorted(j.name for j in journeys)
    keys = ["measured_lift", "ci_low", "ci_high", "true_lift", "n_treated", "n_holdout"]
    run = simulate_journeys(build_world(500, 30, 3), journeys, 3)
    for name, figures in got["journeys"].items():
        assert sorted(figures) == sorted(keys)
        units = run.units[run.units.journey == name]
        t, h = units[units.arm == "treatment"], units[units.arm == "holdout"]
        assert (figures["n_treated"], figures["n_holdout"]) == (len(t), len(h))
        assert figures["true_lift"] == run.truth[name]
        if len(t) and len(h):
            lift = t.converted.mean() - h.converted.mean()
            assert figures["measured_lift"] == pytest.approx(lift)
            assert figures["ci_low"] < figures["ci_high"]
    basket = got["journeys"]["abandoned_basket"]
    assert basket["n_treated"] > 100 and basket["n_holdout"] > 20
    assert basket["ci_low"] <= basket["true_lift"] <= basket["ci_high"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--folder", "{tmp}"], "error: --folder: no journey files (*.yaml) in {tmp}"),
        (["--customers", "0"], "'--customers': Input should be greater than or equal to 1"),
        (["--days", "0"], "'--days': Input should be greater than or equal to 1"),
        (
            ["--folder", "{tmp}", "--seed", "1"],
            "error: {tmp}/bad.yaml:1: journey x: entry: a journey needs an entry (and 1 more: "
            "`nextbest journeys validate` lists them)",
        ),
    ],
)
def test_evaluate_rejects_bad_options(private_home: Path, args, message) -> None:
    from typer.testing import CliRunner

    from nextbest.cli import app

    tmp = private_home / "nothing"
    tmp.mkdir()
    if "--seed" in args:  # a folder holding one file that is not a journey
        (tmp / "bad.yaml").write_text("name: x\noffers: [data_addon]\nsteps: []\n")
    args = [a.replace("{tmp}", str(tmp)) for a in args]
    result = CliRunner().invoke(app, ["journeys", "evaluate", *args])
    assert result.exit_code == 2
    assert message.replace("{tmp}", str(tmp)) in " ".join(result.stderr.split())


def test_coverage_on_a_few_worlds_holds_the_truth() -> None:
    """A sanity check on three small worlds (the 20-world run is the benchmark)."""
    import yaml

    from benchmarks.journey_coverage import run

    basket = Journey.model_validate(yaml.safe_load(EXAMPLE.read_text()))
    result = run([basket], worlds=3, customers=800, days=45, seed=11, progress=False)
    got = result["journeys"]["abandoned_basket"]
    assert got["measured"] == 3 and got["covered"] >= 2
    assert abs(got["mean_measured_lift"] - got["mean_true_lift"]) < 0.05
    assert 0 < got["mean_ci_width"] < 0.3
    assert result["seeds"] == [11, 13] and result["goal"] == "covered in at least 2 of 3 worlds"


def test_cli_report_writes_the_journeys_into_its_json(private_home: Path) -> None:
    import json

    from typer.testing import CliRunner

    from nextbest.cli import app
    from nextbest.db import engine_for
    from nextbest.settings import get_settings
    from tests.experiments.test_report import make_world

    world = make_world(private_home / "world")
    fill_ledger(engine_for(get_settings().ledger_db_url))
    out = private_home / "report"
    args = ["report", "--out", str(out), "--world", str(world), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["journeys"] == 1
    (j,) = json.loads((out / "report.json").read_text())["journeys"]
    assert (j["journey"], j["treated"]["entered"], j["holdout"]["converted"]) == (
        "abandoned_basket", 4, 1,
    )  # fmt: skip
    assert j["verdict"] in (out / "report.html").read_text()
