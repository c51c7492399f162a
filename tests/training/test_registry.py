"""Real MLflow registry and BentoML store: challenger/champion aliases, the promotion gate,
and train/serve consistency through both stores (small seeded tables, no world needed)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from nextbest.settings import Settings
from training.churn import evaluate_churn, fit_churn
from training.registry import RegistryError, client_for, log_model_run, promote
from training.scoring import Scorer, bentoml_models, load_bundle

FEATURES = ["plan", "tenure_days", "complaints_90d"]


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "customer_id": [f"c{seed}-{i}" for i in range(n)],
            "plan": rng.choice(["prepaid", "postpaid_s", "postpaid_m"], n),
            "tenure_days": rng.integers(10, 2000, n).astype(float),
            "complaints_90d": rng.poisson(0.3, n).astype(float),
        }
    )
    logit = -2.5 + 1.2 * (df.plan == "prepaid") - df.tenure_days / 800 + 0.8 * df.complaints_90d
    df["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return df


def _register(settings: Settings, train: pd.DataFrame, valid: pd.DataFrame) -> tuple[Scorer, str]:
    scorer, info = fit_churn(train, FEATURES, "churn_v1", max_rounds=60)
    metrics, plots = evaluate_churn(scorer, valid)
    run = log_model_run(
        settings,
        scorer,
        params=info,
        metrics=metrics,
        validation=valid,
        input_example=valid[FEATURES].head(3),
        plots=plots,
        data_window={"valid_window": "synthetic"},
    )
    return scorer, run["version"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One champion (good model) and one worse challenger (trained on shuffled labels)."""
    settings = Settings(home=tmp_path_factory.mktemp("registry_home"))
    train, valid = _table(3000, 1), _table(1500, 2)
    good, v1 = _register(settings, train, valid)
    first = promote(settings, "churn")
    shuffled = train.assign(label=np.random.default_rng(3).permutation(train["label"].to_numpy()))
    _, v2 = _register(settings, shuffled, valid)
    second = promote(settings, "churn")
    return {
        "settings": settings,
        "good": good,
        "valid": valid,
        "v1": v1,
        "v2": v2,
        "first": first,
        "second": second,
    }


def test_first_challenger_becomes_champion(registry: dict) -> None:
    first = registry["first"]
    assert first.promoted and first.champion_version == registry["v1"]
    assert first.previous_champion is None and "no champion yet" in first.reason
    assert first.bentoml_tag and first.bentoml_tag.startswith("churn:")


def test_promotion_refuses_a_worse_challenger(registry: dict) -> None:
    second, settings = registry["second"], registry["settings"]
    assert not second.promoted
    assert second.challenger_version == registry["v2"]
    assert second.champion_version == registry["v1"]
    assert second.champion_score > second.challenger_score
    assert "does not beat champion v1" in second.reason
    client = mlflow.MlflowClient(settings.tracking_uri)
    assert client.get_model_version_by_alias("churn", "champion").version == int(registry["v1"])
    assert client.get_model_version_by_alias("churn", "challenger").version == int(registry["v2"])
    assert "does not beat" in client.get_model_version("churn", registry["v2"]).tags["promotion"]


def test_champion_by_alias_scores_like_training(registry: dict) -> None:
    """Train/serve consistency: MLflow alias, BentoML store and the bundle agree exactly."""
    settings, good = registry["settings"], registry["good"]
    known = registry["valid"][FEATURES].head(5)
    at_training = good.predict_frame(known)["churn_risk"].to_numpy()
    client_for(settings)  # tracking and registry URIs: a loaded alias reads this store
    by_alias = mlflow.pyfunc.load_model("models:/churn@champion").predict(known)
    np.testing.assert_array_equal(by_alias["churn_risk"].to_numpy(), at_training)
    bundle = load_bundle(settings)
    assert bundle is not None and bundle.versions == {"churn": registry["v1"]}
    served = [bundle.churn_risk(row) for row in known.to_dict("records")]
    np.testing.assert_allclose(served, at_training, rtol=0, atol=1e-12)
    assert bentoml_models(settings).get("churn:latest").info.labels["alias"] == "champion"


def test_load_bundle_is_none_before_any_promotion(tmp_path: Path) -> None:
    assert load_bundle(Settings(home=tmp_path)) is None


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("ranker", r"^model: 'ranker' is not one of churn, propensity$"),
        ("propensity", r"^model: 'propensity' has no challenger; run `nextbest train propensity`"),
    ],
)
def test_promote_bad_model(registry: dict, model: str, error: str) -> None:
    with pytest.raises(RegistryError, match=error):
        promote(registry["settings"], model)


def test_a_point_win_within_the_noise_does_not_promote(tmp_path: Path) -> None:
    """A challenger trained on another sample of the same world: its AUC on the validation
    window is higher than the champion's (0.7668 against 0.7645), but the paired bootstrap's
    lower bound of the advantage is below zero, so it is not promoted (``>`` on the two point
    values promoted it)."""
    settings = Settings(home=tmp_path)
    valid = _table(1500, 2)
    _, v1 = _register(settings, _table(3000, 1), valid)
    assert promote(settings, "churn").promoted
    _, v2 = _register(settings, _table(3000, 3), valid)
    second = promote(settings, "churn")
    assert second.challenger_score > second.champion_score  # a point win...
    assert not second.promoted and second.champion_version == v1
    low = float(second.reason.split("paired bootstrap ")[1].split(" to ")[0])
    assert low < 0  # ...within the noise
    assert second.reason.endswith(f"does not beat champion v{v1} by more than the margin 0")


def test_paired_bootstrap_matches_the_normal_interval_of_a_mean_difference() -> None:
    from training.evaluate import paired_bootstrap

    rng = np.random.default_rng(4)
    a = rng.normal(1.0, 1.0, 2000)
    b = a + rng.normal(0.1, 0.2, 2000)  # b is a plus a small, noisy shift: strongly paired
    low, high = paired_bootstrap(lambda i: float(b[i].mean() - a[i].mean()), 2000, draws=1000)
    d = b - a
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    assert (low, high) == pytest.approx((d.mean() - half, d.mean() + half), abs=0.004)
    assert high - low < 0.05  # two separate intervals of the means would be about 0.12 wide
