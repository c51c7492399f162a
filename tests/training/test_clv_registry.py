"""The CLV model in the MLflow registry: ``clv train`` registers both models with the better
one champion, a version's files predict exactly as the fitted model did, ``clv_12m`` is scored
by whatever the champion is, and ``nextbest promote clv`` holds the validation-MAE gate.
One small world trained once (pymc-marketing's fits are most of the time)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nextbest.settings import Settings
from training.clv_registry import MODEL_NAME, ClvModel, load_bundle

pytestmark = pytest.mark.slow


@dataclass
class ClvHome:
    settings: Settings
    trained: dict[str, Any]
    fitted: dict[str, ClvModel]  # the models as fitted, before the registry held them


@pytest.fixture(scope="module")
def clv_home(tmp_path_factory: pytest.TempPathFactory) -> ClvHome:
    """200 customers x 100 days: long enough for the trees to be judged on the window too."""
    from features.build import build_features
    from features.store import apply_repo, get_store, materialize
    from simulator.world import simulate_world
    from training import clv_registry
    from training.clv_world import train_clv

    settings = Settings(home=tmp_path_factory.mktemp("clv_home"), online_store="sqlite")
    simulate_world(customers=200, days=100, seed=7, out=settings.world_dir)
    build = build_features(settings, settings.world_dir)
    store = get_store(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_repo(store)
        end = pd.Timestamp(build["snapshots"][-1]).to_pydatetime() + timedelta(seconds=1)
        materialize(store, end=end)
        fitted: dict[str, ClvModel] = {}
        register = clv_registry.register

        def keep(*args: Any) -> dict[str, dict[str, str]]:  # the real one, its input kept
            fitted.update(args[2])
            return register(*args)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(clv_registry, "register", keep)
            trained = train_clv(settings)
    return ClvHome(settings, trained, fitted)


def _values(settings: Settings) -> pd.Series:
    from features.repo.data_sources import VALUE_PATH

    rows = pd.read_parquet(settings.feature_dir / VALUE_PATH)
    return rows.set_index("customer_id")["clv_12m"].sort_index()


def _version(settings: Settings, version: str) -> tuple[Path, ClvModel, pd.DataFrame]:
    """One registered version's files, its model, and the event log's summary it scores."""
    from mlflow.artifacts import download_artifacts

    from training.clv import features_at
    from training.clv_data import purchase_days
    from training.clv_world import event_log_transactions, profile_features

    folder = Path(download_artifacts(artifact_uri=f"models:/clv/{version}"))
    model = load_bundle(folder)
    tx = event_log_transactions(settings)
    extra = profile_features(settings) if model.trees is not None else None
    return folder, model, features_at(purchase_days(tx), pd.Timestamp(tx["date"].max()), extra)


def _version_values(settings: Settings, version: str) -> pd.Series:
    """What one registered version predicts for the event log (the scoring path's inputs)."""
    from training.clv_world import HORIZON_DAYS

    _, model, summary = _version(settings, version)
    return model.predict(summary, HORIZON_DAYS)["expected_value"].sort_index()


def test_clv_train_registers_both_and_scores_with_the_better_champion(clv_home) -> None:  # noqa: ANN001
    from training.registry import client_for

    settings, trained = clv_home.settings, clv_home.trained
    client = client_for(settings)
    aliases = client.get_registered_model(MODEL_NAME).aliases
    assert set(aliases) == {"champion", "challenger"}
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    challenger = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    assert champion.tags["clv_model"] == trained["chosen"]
    mae = {
        v.version: client.get_run(v.run_id).data.metrics["mae_purchases"]
        for v in (champion, challenger)
    }
    assert mae[champion.version] <= mae[challenger.version]
    assert trained["registered"][trained["chosen"]]["alias"] == "champion"
    assert trained["scored_by"] == f"clv:{champion.version} ({trained['chosen']})"
    files = {f.path for f in client.list_artifacts(champion.run_id, "model")}
    assert {"model/clv.json", "model/bg.nc", "model/gg.nc"} <= files
    for kind, meta in trained["registered"].items():  # the files predict as the fit did
        folder, model, summary = _version(settings, meta["version"])
        assert model.kind == kind
        expected = clv_home.fitted[kind].predict(summary, 365)
        pd.testing.assert_frame_equal(model.predict(summary, 365), expected)
        for nc in ("bg.nc", "gg.nc"):  # salted keys only
            assert str(summary.index[0]).encode() not in (folder / nc).read_bytes()
    written = _values(settings)
    assert np.allclose(written, _version_values(settings, champion.version), rtol=1e-9)
    assert not np.allclose(written, _version_values(settings, challenger.version), rtol=1e-3)


def test_promotion_moves_what_is_scored(clv_home, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from nextbest.cli import app
    from nextbest.settings import get_settings
    from training.registry import client_for

    settings = clv_home.settings
    monkeypatch.setenv("NEXTBEST_HOME", str(settings.home))
    monkeypatch.setenv("NEXTBEST_ONLINE_STORE", "sqlite")
    get_settings.cache_clear()
    client = client_for(settings)
    better = str(client.get_model_version_by_alias(MODEL_NAME, "champion").version)
    worse = str(client.get_model_version_by_alias(MODEL_NAME, "challenger").version)
    before = _values(settings)
    runner = CliRunner()
    try:
        # a data scientist moves the alias in MLflow: `clv score` follows it
        client.set_registered_model_alias(MODEL_NAME, "champion", worse)
        client.set_registered_model_alias(MODEL_NAME, "challenger", better)
        scored = runner.invoke(app, ["clv", "score", "--json"])
        assert scored.exit_code == 0, scored.output
        assert json.loads(scored.stdout.strip().splitlines()[-1])["scored_by"].startswith(
            f"clv:{worse} "
        )
        assert np.allclose(_values(settings), _version_values(settings, worse), rtol=1e-9)
        # the gate: the better one on the same window wins back, and the values follow
        out = runner.invoke(app, ["promote", "clv", "--json"])
        assert out.exit_code == 0, out.output
        decision = json.loads(out.stdout.strip().splitlines()[-1])
        assert decision["promoted"] is True and decision["champion_version"] == better
        assert decision["challenger_score"] <= decision["champion_score"]
        assert np.allclose(_values(settings), before, rtol=1e-9)
        again = runner.invoke(app, ["promote", "clv", "--json"])
        decision = json.loads(again.stdout.strip().splitlines()[-1])
        assert decision["promoted"] is False and decision["champion_version"] == better
        assert "does not beat champion" in decision["reason"]
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["promote", "clv"],
         "error: model: 'clv' has no challenger and champion; run `nextbest clv train`"),
        (["clv", "score"],
         "error: events: no event log in the home (run `nextbest features build` first)"),
    ],
)  # fmt: skip
def test_nothing_to_promote_or_score_exits_2_with_one_line(
    private_home: Path, args: list[str], error: str
) -> None:
    from nextbest.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == error
