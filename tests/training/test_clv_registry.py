"""The CLV model in the MLflow registry: ``clv train`` registers both models with the better
one champion, a version's files predict exactly as the fitted model did, ``clv_12m`` is scored
by whatever the champion is, and ``nextbest promote clv`` holds the validation-MAE gate.
One small world trained once (pymc-marketing's fits are most of the time)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nextbest.settings import Settings
from tests.conftest import materialised_store
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
    from simulator.world import simulate_world
    from training import clv_registry
    from training.clv_world import train_clv

    settings = Settings(home=tmp_path_factory.mktemp("clv_home"), online_store="sqlite")
    simulate_world(customers=200, days=100, seed=7, out=settings.world_dir)
    materialised_store(settings, settings.world_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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


def test_erasure_drops_a_customer_from_every_fit_summary(clv_home, tmp_path: Path) -> None:  # noqa: ANN001
    """The fitted summaries kept with each version lose the erased customer's row (a copy of
    the home's artifacts, so the other tests keep theirs); the versions still load and
    predict the other customers as before."""
    import shutil

    from training.clv_registry import erase_fit_rows
    from training.registry import client_for, customer_key

    client_for(clv_home.settings)  # the registry the versions are read from
    settings = clv_home.settings.model_copy(update={"home": tmp_path})
    shutil.copytree(clv_home.settings.home / "mlartifacts", tmp_path / "mlartifacts")
    version = clv_home.trained["registered"][clv_home.trained["chosen"]]["version"]
    folder, model, summary = _version(clv_home.settings, version)
    files = sorted((tmp_path / "mlartifacts").rglob("*.nc"))
    sizes = {f: len(_fit_keys(f)) for f in files}
    in_all = set.intersection(*(set(_fit_keys(f)) for f in files))  # a repeat buyer (Gamma-Gamma)
    gone = next(str(c) for c in summary.index if customer_key(settings, str(c)) in in_all)
    key, kept = customer_key(settings, gone), summary.drop(index=gone)
    before = model.predict(kept, 365)
    assert erase_fit_rows(settings, [gone]) == len(files)  # one row in each summary
    assert all(key not in _fit_keys(f) and len(_fit_keys(f)) == sizes[f] - 1 for f in files)
    assert erase_fit_rows(settings, [gone]) == 0
    spec = (folder / "clv.json").read_text()
    copies = [p.parent for p in (tmp_path / "mlartifacts").rglob("clv.json")]
    assert copies
    for copy in copies:  # every version still loads and predicts; the chosen one as before
        predicted = load_bundle(copy).predict(kept, 365)
        if (copy / "clv.json").read_text() == spec:
            pd.testing.assert_frame_equal(predicted, before)


def _fit_keys(path: Path) -> list[str]:
    """The salted customer keys of one fitted summary."""
    import arviz as az

    return az.from_netcdf(str(path)).fit_data["customer_id"].to_numpy().astype(str).tolist()
