"""MLflow tracking and registry: every run registers a ``challenger``; promotion re-scores the
challenger and the ``champion`` on the challenger's validation window and moves the alias only
when the challenger wins (the lower bound of its paired bootstrap advantage is above
``Settings.model_promotion_margin``), then imports the champion into the BentoML model store.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel
from sklearn.metrics import roc_auc_score

from nextbest.settings import Settings
from training.evaluate import paired_bootstrap, uplift_metrics
from training.scoring import Scorer, bentoml_models

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

CHALLENGER, CHAMPION = "challenger", "champion"
VALIDATION_FILE = "validation.parquet"
CUSTOMER_KEY = "customer_key"  # the validation window's salted customer id (``pseudonymous``)
GATE_METRIC = {"churn": "auc", "propensity": "qini"}  # higher is better for both
PIP_REQUIREMENTS = ["lightgbm>=4.7,<4.8", "pandas>=2.3,<3", "numpy>=2.4,<2.5", "pydantic>=2.7,<3"]


class RegistryError(ValueError):
    """A promotion that cannot run (no challenger, unknown model)."""


class UnknownModel(RegistryError):
    """A model name the registry does not keep (a bad request, not a state of the registry)."""


class Promotion(BaseModel):
    """What ``nextbest promote`` decided, and why."""

    model: str
    promoted: bool
    challenger_version: str
    champion_version: str | None  # the champion after the decision
    previous_champion: str | None
    metric: str
    challenger_score: float | None  # None: the bandit had no champion to be judged against
    champion_score: float | None
    reason: str
    bentoml_tag: str | None = None


def client_for(settings: Settings) -> MlflowClient:
    """An MlflowClient on the project's tracking store (and the global URI set to it)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)


def experiment_id(settings: Settings, model: str) -> str:
    """One experiment per model, artifacts under the project's home (not ./mlruns)."""
    client = client_for(settings)
    name = f"nextbest-{model}"
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (settings.home / "mlartifacts" / model).as_uri()
    return client.create_experiment(name, artifact_location=location)


def log_model_run(
    settings: Settings,
    scorer: Scorer,
    *,
    params: dict[str, Any],
    metrics: dict[str, float],
    validation: pd.DataFrame,
    input_example: pd.DataFrame,
    plots: dict[str, Figure],
    data_window: dict[str, str],
) -> dict[str, str]:
    """Log one training run and register its model as a new ``challenger`` version."""
    import matplotlib.pyplot as plt
    import mlflow
    from mlflow.models import infer_signature

    model = scorer.spec.kind
    client = client_for(settings)
    with (
        mlflow.start_run(experiment_id=experiment_id(settings, model)) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        mlflow.log_params(params)
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        mlflow.set_tags({"feature_service": scorer.spec.feature_service, **data_window})
        for name, fig in plots.items():
            mlflow.log_figure(fig, f"plots/{name}.png")
            plt.close(fig)
        pseudonymous(settings, validation).to_parquet(Path(tmp) / VALIDATION_FILE)
        mlflow.log_artifact(str(Path(tmp) / VALIDATION_FILE))
        bundle = scorer.save(Path(tmp) / "bundle")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts={"bundle": str(bundle)},
            signature=infer_signature(input_example, scorer.predict_frame(input_example)),
            input_example=input_example,
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=model,
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(model, CHALLENGER, version)
    return {"run_id": run.info.run_id, "model": model, "version": version, "alias": CHALLENGER}


def pseudonymous(settings: Settings, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with ``customer_id`` replaced by its salted hash (``CUSTOMER_KEY``): an
    artifact outlives the ledger's rows, so it never holds an id in the clear; the hash still
    groups a customer's rows, and lets an erasure find and drop them."""
    if "customer_id" not in frame.columns:
        return frame
    key = frame["customer_id"].map(lambda c: customer_key(settings, str(c)))
    out = frame.drop(columns="customer_id")
    out.insert(0, CUSTOMER_KEY, key.to_numpy())
    return out


def customer_key(settings: Settings, customer_id: str) -> str:
    """A customer id as the model artifacts keep it: salted with the identity salt."""
    from features.identity import salted_hash

    return salted_hash(settings.identity_salt.encode(), "artifact", customer_id)


def erase_validation_rows(settings: Settings, customer_ids: list[str]) -> int:
    """Drop these customers' rows from every logged validation window (the artifacts under
    the home; a remote artifact store is out of reach here); rows removed. Rewrites each file
    atomically; a run's gate then scores the window without them."""
    import pyarrow.compute as pa_compute
    import pyarrow.parquet as pq

    gone = [customer_key(settings, c) for c in customer_ids]
    n = 0
    for path in sorted((settings.home / "mlartifacts").rglob(VALIDATION_FILE)):
        if CUSTOMER_KEY not in pq.read_schema(path).names:
            continue
        table = pq.read_table(path)
        hit = pa_compute.is_in(table[CUSTOMER_KEY], value_set=pa.array(gone, pa.string()))
        removed = pa_compute.sum(hit).as_py() or 0
        if removed:
            tmp = path.with_suffix(".erase.tmp")
            pq.write_table(table.filter(pa_compute.invert(hit)), tmp)
            tmp.replace(path)
            n += removed
    return n


def load_version(settings: Settings, model: str, version: str) -> Scorer:
    """The scorer of one registered version, straight from its MLflow artifacts."""
    from mlflow.artifacts import download_artifacts

    client_for(settings)
    local = download_artifacts(artifact_uri=f"models:/{model}/{version}")
    return Scorer.load(Path(local) / "artifacts" / "bundle")


def gate_scores(scorer: Scorer, validation: pd.DataFrame) -> np.ndarray:
    """What the gate ranks rows by: the churn risk or the predicted uplift of each row."""
    missing = set(scorer.spec.columns) - set(validation.columns)
    if missing:
        raise RegistryError(
            f"validation: the window lacks columns {sorted(missing)} that the "
            f"{scorer.spec.feature_service} model needs; promote by retraining both on one service"
        )
    column = "churn_risk" if scorer.spec.kind == "churn" else "uplift"
    return scorer.predict_frame(validation)[column].to_numpy(dtype=float)


def gate_metric(model: str, validation: pd.DataFrame) -> Callable[[np.ndarray, Any], float]:
    """The promotion metric of scores on rows ``idx`` of the validation frame (AUC, or the
    Qini coefficient); NaN where it is undefined (a resample with one class only)."""
    y = validation["label"].to_numpy(dtype=float)
    if model == "churn":
        return lambda s, idx: float(roc_auc_score(y[idx], s[idx])) if np.ptp(y[idx]) else np.nan
    treated = validation["treated"].to_numpy(dtype=float)
    return lambda s, idx: uplift_metrics(y[idx], treated[idx], s[idx])["qini"]


def gate_score(scorer: Scorer, validation: pd.DataFrame) -> float:
    """The promotion metric of a scorer on a validation frame (AUC or Qini coefficient)."""
    every = slice(None)
    return gate_metric(scorer.spec.kind, validation)(gate_scores(scorer, validation), every)


def _validation_of(settings: Settings, run_id: str) -> pd.DataFrame:
    import mlflow

    client_for(settings)
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=VALIDATION_FILE)
    return pd.read_parquet(path)


def promote(settings: Settings, model: str) -> Promotion:
    """Make the challenger champion if it beats the champion on the challenger's window."""
    from mlflow.exceptions import MlflowException

    if model not in GATE_METRIC:
        raise UnknownModel(f"model: '{model}' is not one of {', '.join(GATE_METRIC)}")
    client = client_for(settings)
    try:
        challenger = client.get_model_version_by_alias(model, CHALLENGER)
    except MlflowException:
        raise RegistryError(
            f"model: '{model}' has no challenger; run `nextbest train {model}` first"
        ) from None
    try:
        champion = client.get_model_version_by_alias(model, CHAMPION)
    except MlflowException:
        champion = None
    metric = GATE_METRIC[model]
    validation = _validation_of(settings, challenger.run_id)
    window = client.get_run(challenger.run_id).data.tags.get("valid_window", "challenger's")
    score_of = gate_metric(model, validation)
    every = slice(None)
    new_scores = gate_scores(load_version(settings, model, challenger.version), validation)
    new_score, old_score = score_of(new_scores, every), None
    previous = str(champion.version) if champion else None
    version = str(challenger.version)
    if champion is not None and champion.version == challenger.version:
        promoted, reason = False, f"version {challenger.version} is already champion"
    elif champion is None:
        promoted = True
        reason = f"{metric} {new_score:.4f} on validation window {window} (no champion yet)"
    else:
        old_scores = gate_scores(load_version(settings, model, champion.version), validation)
        old_score = score_of(old_scores, every)
        low, high = paired_bootstrap(
            lambda idx: score_of(new_scores, idx) - score_of(old_scores, idx),
            len(validation),
            seed=settings.seed,
        )
        margin = settings.model_promotion_margin
        promoted = low > margin
        reason = (
            f"{metric} {new_score:.4f} on validation window {window} against "
            f"{old_score:.4f}: advantage {new_score - old_score:+.4f} (95% paired bootstrap "
            f"{low:+.4f} to {high:+.4f}) {'beats' if promoted else 'does not beat'} champion "
            f"v{previous} by more than the margin {margin:g}"
        )
    if previous != version:  # a decision was taken: record it on the challenger version
        client.set_model_version_tag(model, version, "promotion", reason)
        client.set_model_version_tag(model, version, f"gate_{metric}", f"{new_score:.6f}")
    result = Promotion(
        model=model,
        promoted=promoted,
        challenger_version=version,
        champion_version=version if promoted else previous,
        previous_champion=previous,
        metric=metric,
        challenger_score=round(new_score, 6),
        champion_score=None if old_score is None else round(old_score, 6),
        reason=reason,
    )
    if promoted:
        client.set_registered_model_alias(model, CHAMPION, challenger.version)
        client.update_model_version(model, challenger.version, description=f"champion: {reason}")
        result.bentoml_tag = import_champion(settings, model, challenger.version, reason)
    return result


def import_champion(settings: Settings, model: str, version: str, reason: str) -> str:
    """Copy the champion into the BentoML model store, so ``name:latest`` is the champion."""
    bentoml_models(settings)
    import bentoml

    client_for(settings)
    bento_model = bentoml.mlflow.import_model(
        model,
        f"models:/{model}/{version}",
        labels={"alias": CHAMPION},
        metadata={"mlflow_version": version, "promotion": reason},
    )
    return str(bento_model.tag)
