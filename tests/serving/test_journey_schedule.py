# ruff: noqa: F811 - tests take the imported ``trained_world`` fixture by name
"""Scheduled entries (``serving.journey_schedule``) on a real feature home: the trained world
of tests/training (simulate -> features build -> Feast apply and materialise -> churn model
promoted), with a ledger and journeys folder of each test's own. Each trigger type enters
exactly the customers the truth computed here from the raw files says; a second sweep of a
window enters nobody; a new process continues from the stored window end; a predictive
trigger enters on a crossing only."""

from __future__ import annotations

import json
import random
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from sqlalchemy import select, update
from typer.testing import CliRunner

from features.build import PROFILE_PATH
from features.ingest import read_event_log
from features.repo.data_sources import SNAPSHOT_PATH
from features.store import read_online
from journeys.definition import Journey
from journeys.state import journey_instances
from journeys.triggers import entries
from nextbest.cli import app
from nextbest.db import engine_for
from nextbest.settings import Settings
from offers.catalog import load_catalog
from record.ledger import Ledger
from serving.deps import Deps, FeatureReader
from serving.journey_intents import run_round
from serving.journey_schedule import claim_sweep, sweep
from tests.training.conftest import TrainedWorld, trained_world  # noqa: F401 - the fixture

EXAMPLES = Path(__file__).resolve().parents[2] / "journeys" / "examples"
T = pd.Timestamp
FEB, MAR = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)


def write_journey(folder: Path, name: str, entry: dict | None = None, **rules: Any) -> Journey:
    """A shipped example into ``folder``, its entry and rules overridden."""
    data = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    if entry is not None:
        data["entry"] = entry
    data["name"] = data["name"] if entry is None else f"{name}_t"
    data["rules"] = {**data["rules"], **rules}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{data['name']}.yaml").write_text(yaml.safe_dump(data))
    return Journey.model_validate(data)


@pytest.fixture(scope="module")
def models(trained_world: TrainedWorld) -> Any:
    from training.scoring import load_bundle

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_bundle(trained_world.settings)


def make_deps(tw: TrainedWorld, tmp: Path, models: Any) -> Deps:
    """Real parts over the trained world's features, a ledger and journeys of this test's own."""
    from features.identity import graph_for

    settings = Settings(
        home=tw.settings.home,
        ledger_url=f"sqlite:///{tmp / 'ledger.db'}",
        journeys_dir=tmp / "journeys",
        global_holdout_share=0.0,
        experiment_holdout_share=0.0,
    )
    return Deps(
        settings=settings,
        ledger=Ledger(engine_for(settings.ledger_db_url)),
        catalog=load_catalog(),
        graph=graph_for(settings),
        features=FeatureReader(tw.store, read_online),
        models=models,
        rng=random.Random(7),
    )


@pytest.fixture
def deps(trained_world: TrainedWorld, tmp_path: Path, models: Any) -> Deps:
    return make_deps(trained_world, tmp_path, models)


def instances(deps: Deps, journey: str | None = None) -> set[tuple[str, pd.Timestamp]]:
    c = journey_instances.c
    q = select(c.customer_id, c.entered_at)
    if journey is not None:
        q = q.where(c.journey == journey)
    with deps.ledger.engine.connect() as conn:
        return {(cid, T(t).tz_localize("UTC")) for cid, t in conn.execute(q).all()}


# --- truth, from the raw files --------------------------------------------------------------
def crm(tw: TrainedWorld) -> pd.DataFrame:
    return pd.read_parquet(tw.settings.feature_dir / PROFILE_PATH)


def churned(tw: TrainedWorld) -> pd.Series:
    log = read_event_log(tw.settings)
    return log[log["event_type"] == "churn"].groupby("customer_id")["ts"].max()


def first_per_customer(found: pd.DataFrame, tw: TrainedWorld) -> set[tuple[str, pd.Timestamp]]:
    """The truth's entries less those after a churn, one per customer (one live instance)."""
    gone = found["customer_id"].map(churned(tw))
    found = found[~(gone <= found["ts"])].sort_values("ts").drop_duplicates("customer_id")
    return {(c, T(t)) for c, t in zip(found["customer_id"], found["ts"], strict=True)}


def lifecycle_truth(tw: TrainedWorld, after: timedelta, since: datetime, now: datetime) -> set:
    p = crm(tw)
    due = p["tenure_start"] + after
    hit = p[(due > since) & (due <= now)]
    return first_per_customer(pd.DataFrame({"customer_id": hit["customer_id"],
                                            "ts": due[hit.index]}), tw)  # fmt: skip


def renewal_truth(tw: TrainedWorld, since: datetime, now: datetime) -> set:
    """Contract end as the CRM held it at ``since``, its London date minus 60 days, at 09:00
    London time (the journey's time zone: the default)."""
    p = crm(tw)
    renewed_later = p["renewed_at"].notna() & (p["renewed_at"] > since)
    end = p["contract_end"].where(~renewed_later, p["prior_contract_end"])
    day = end.dt.tz_convert("Europe/London").dt.tz_localize(None).dt.normalize()
    local = day - pd.Timedelta(days=60) + pd.Timedelta(hours=9)
    due = local.dt.tz_localize("Europe/London").dt.tz_convert("UTC")
    hit = due.notna() & (due > since) & (due <= now)
    return first_per_customer(
        pd.DataFrame({"customer_id": p.loc[hit, "customer_id"], "ts": due[hit]}), tw
    )


# --- each type ----------------------------------------------------------------------------------
def test_lifecycle_and_calendar_enter_the_truth_once(
    deps: Deps, trained_world: TrainedWorld
) -> None:
    tw, folder = trained_world, deps.settings.journeys_path
    life = {"type": "lifecycle", "anchor": "sign_up", "after": "400d"}
    write_journey(folder, "onboarding", life)
    write_journey(folder, "contract_renewal", reentry_after="0d")
    done = sweep(deps, MAR, FEB)
    want_life = lifecycle_truth(tw, timedelta(days=400), FEB, MAR)
    want_cal = renewal_truth(tw, FEB, MAR)
    assert want_life and want_cal  # the window holds entries of both kinds
    assert instances(deps, "onboarding_t") == want_life
    assert instances(deps, "contract_renewal") == want_cal
    assert done.entered == {"contract_renewal": len(want_cal), "onboarding_t": len(want_life)}
    # the batch evaluation agrees, on the same frames
    p = crm(tw).rename(columns={"tenure_start": "sign_up"})
    j = write_journey(folder, "onboarding", life)
    tick = timedelta(microseconds=1)
    assert first_per_customer(entries(j, None, p, FEB + tick, MAR + tick), tw) == want_life

    with deps.ledger.engine.begin() as conn:  # ended, no cool-down: only the sweep's own
        conn.execute(update(journey_instances).values(status="completed", ended_at=FEB))
    again = sweep(deps, MAR, FEB)  # the same window again: nobody enters twice
    assert again.entered == {"contract_renewal": 0, "onboarding_t": 0}
    assert instances(deps, "contract_renewal") == want_cal


def test_behavioural_enters_the_truth(deps: Deps, trained_world: TrainedWorld) -> None:
    tw, folder = trained_world, deps.settings.journeys_path
    drop = write_journey(folder, "winback")
    new = write_journey(folder, "winback", {"type": "behavioural", "change": "new_category",
                                            "event": "purchase"})  # fmt: skip
    since, now = MAR, datetime(2026, 3, 21, tzinfo=UTC)
    done = sweep(deps, now, since)
    log = read_event_log(tw.settings)
    window = (since + timedelta(microseconds=1), now + timedelta(microseconds=1))
    for j in (drop, new):
        want = first_per_customer(entries(j, log, None, *window), tw)
        assert want, j.name  # the window holds entries
        assert instances(deps, j.name) == want
        assert done.entered[j.name] == len(want)


def test_a_new_process_continues_from_the_stored_end(
    deps: Deps,
    trained_world: TrainedWorld,
    tmp_path: Path,
    models: Any,
) -> None:
    tw = trained_world
    write_journey(deps.settings.journeys_path, "contract_renewal")
    middle = datetime(2026, 2, 15, tzinfo=UTC)
    sweep(deps, middle, FEB)
    later = make_deps(tw, tmp_path, models)  # a restart: new parts, the same ledger
    done = sweep(later, MAR)
    assert done.since == {"contract_renewal": middle}
    assert instances(later) == renewal_truth(tw, FEB, middle) | renewal_truth(tw, middle, MAR)
    assert done.entered["contract_renewal"] == len(renewal_truth(tw, middle, MAR)) > 0
    assert sweep(later, MAR).entered == {"contract_renewal": 0}  # nothing left in (MAR, MAR]


# --- predictive ---------------------------------------------------------------------------------
def snapshot_scores(tw: TrainedWorld, models: Any, at: pd.Timestamp) -> pd.Series:
    rows = pd.read_parquet(tw.settings.feature_dir / SNAPSHOT_PATH)
    rows = rows[rows["event_timestamp"] == at].reset_index(drop=True)
    return pd.Series(
        models.churn.predict_frame(rows)["churn_risk"].to_numpy(), index=rows["customer_id"]
    )


def test_predictive_enters_on_a_crossing_only(
    deps: Deps,
    trained_world: TrainedWorld,
    models: Any,
) -> None:
    tw = trained_world
    last, before = (T(s) for s in tw.build["snapshots"][-1:-3:-1])
    s0, s1 = snapshot_scores(tw, models, before), snapshot_scores(tw, models, last)
    above = float(s0.quantile(0.8))
    gone = churned(tw)
    alive = s1.index[~s1.index.map(lambda c: c in gone.index and gone[c] <= last)]
    crossers = {c for c in alive if s1[c] > above and not s0.get(c, 0.0) > above}
    stay = {c for c in alive if s1[c] > above and s0.get(c, 0.0) > above}
    assert crossers and stay
    j = write_journey(deps.settings.journeys_path, "churn_save",
                      {"type": "predictive", "score": "churn_risk", "above": above},
                      reentry_after="0d")  # fmt: skip
    hour = timedelta(hours=1)
    first = sweep(deps, before + hour, before - hour)
    first_in = {c for c, _ in instances(deps)}
    gone_before = set(gone.index[gone <= before])
    assert first_in == {c for c in s0.index if s0[c] > above} - gone_before  # the first counts
    with deps.ledger.engine.begin() as conn:  # their dialogs end: re-entry is allowed at once
        conn.execute(update(journey_instances).values(status="completed", ended_at=before))
    second = sweep(deps, last + hour)
    entered = {c for c, t in instances(deps) if t == last}
    assert entered == crossers  # not those who stayed above
    assert second.entered == {j.name: len(crossers)} and first.entered[j.name] == len(first_in)
    # the score is the served one: the promoted model on the online features /decide reads
    c = journey_instances.c
    with deps.ledger.engine.connect() as conn:
        ctx = dict(conn.execute(select(c.customer_id, c.context).where(c.entered_at == last)).all())
    for cid in sorted(crossers)[:5]:
        served = deps.models.churn_risk(deps.features.read(cid))
        assert ctx[cid]["churn_risk"] == pytest.approx(served, abs=1e-6)
    assert sweep(deps, last + 2 * hour, before).entered == {j.name: 0}  # no new rows: no score


# --- cadence and CLI ----------------------------------------------------------------------------
def test_the_runner_sweeps_once_per_interval(deps: Deps, trained_world: TrainedWorld) -> None:
    write_journey(deps.settings.journeys_path, "contract_renewal")
    due = sorted(t for _, t in renewal_truth(trained_world, FEB, MAR))
    at = due[0].to_pydatetime() + timedelta(minutes=30)  # the first sweep looks an hour back
    entered, _ = run_round(deps, now=at)
    want = renewal_truth(trained_world, at - timedelta(hours=1), at)
    assert entered == len(want) > 0 and instances(deps) == want
    assert not claim_sweep(deps, at + timedelta(minutes=59))
    assert claim_sweep(deps, at + timedelta(minutes=60))


BAD = [
    (["--since", "yesterday"], "error: --since: not an ISO 8601 time: 'yesterday'"),
    (["--since", "2026-02-30"], "error: --since: not an ISO 8601 time: '2026-02-30'"),
    (["--now", "soon"], "error: --now: not an ISO 8601 time: 'soon'"),
    (
        ["--since", "2026-03-02", "--now", "2026-03-01"],
        "error: --since: must be before --now (2026-03-02T00:00:00+00:00 >= "
        "2026-03-01T00:00:00+00:00)",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_sweep_cli_refuses_bad_times(private_home: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["journeys", "sweep", *args])
    assert result.exit_code == 2
    assert result.stderr.strip() == message


def test_sweep_cli_prints_entries_per_journey(
    trained_world: TrainedWorld,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nextbest.settings import get_settings

    write_journey(tmp_path / "journeys", "contract_renewal")
    env = {
        "HOME": trained_world.settings.home,
        "LEDGER_URL": f"sqlite:///{tmp_path}/l.db",
        "JOURNEYS_DIR": tmp_path / "journeys",
        "GLOBAL_HOLDOUT_SHARE": 0,
    }
    for k, v in env.items():
        monkeypatch.setenv(f"NEXTBEST_{k}", str(v))
    get_settings.cache_clear()
    try:
        args = ["journeys", "sweep", "--since", "2026-02-01", "--now", "2026-03-01", "--json"]
        result = CliRunner().invoke(app, args)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["entered"] == {"contract_renewal": len(renewal_truth(trained_world, FEB, MAR))}
    assert out["since"] == {"contract_renewal": "2026-02-01T00:00:00+00:00"}
    assert out["skipped"] == {}
