"""The CLV model in the MLflow registry, under the name ``clv`` like churn and propensity.

``nextbest clv train`` registers both refitted models (BG/NBD + Gamma-Gamma, and the LightGBM
trees with the BG/NBD they are stretched by) as versions of ``clv``: the one with the lower
per-customer MAE of purchase days on the validation window is aliased ``champion``, the other
``challenger``. ``clv_12m`` is always scored by whatever version ``champion`` points to, so a
promotion (``nextbest promote clv``, ``POST /promote/clv``, or the alias moved in MLflow)
changes what the profile carries.

A version's files are ``clv.json`` (kind, window, tree columns, parameters), ``bg.nc`` and
``gg.nc`` (pymc-marketing's own format; their fitted summaries keep only salted customer keys,
as every artifact does) and, for ``lightgbm``, the two boosters as LightGBM text files.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from nextbest.settings import Settings
from training.clv import ClvResult, ModelName, Trees, trees_predict
from training.clv_btyd import Btyd, _quiet_pymc, btyd_predict
from training.registry import (
    CHALLENGER,
    CHAMPION,
    Promotion,
    RegistryError,
    client_for,
    customer_key,
    experiment_id,
)

MODEL_NAME = "clv"
GATE = "mae_purchases"  # per-customer MAE of purchase days on the validation window; lower wins
SPEC_FILE = "clv.json"


@dataclass
class ClvModel:
    """One registered CLV version, ready to score RFM summaries."""

    kind: ModelName
    btyd: Btyd
    trees: Trees | None = None

    def predict(self, summary: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
        """Expected purchase days, value and P(alive) over the horizon, per summary row."""
        if self.trees is None:
            return btyd_predict(self.btyd, summary, horizon_days)
        return trees_predict(self.trees, self.btyd, summary, horizon_days)


def _save_pymc(settings: Settings, model: Any, path: Path) -> None:
    """pymc-marketing's file with the fitted summary's customer ids replaced by salted keys
    (loading needs the summary's shape, not whose it is)."""
    idata = model.idata.copy()
    ids = idata.fit_data["customer_id"].to_numpy()
    keys = np.array([customer_key(settings, str(c)) for c in ids], dtype=object)
    idata.fit_data["customer_id"] = (idata.fit_data["customer_id"].dims, keys.astype(str))
    if "observed_data" in idata.groups():
        del idata.observed_data  # indexed by customer id; prediction does not read it
    idata.to_netcdf(str(path))


def erase_fit_rows(settings: Settings, customer_ids: list[str]) -> int:
    """Right to erasure: drop these customers' rows from the fitted summaries every registered
    CLV version keeps (``bg.nc``, ``gg.nc`` under the home's artifacts; a remote artifact store
    is out of reach here); rows removed. The fitted parameters stay: loading and predicting
    need the summary's shape, not these customers. Each file is rewritten atomically."""
    import arviz as az

    gone = [customer_key(settings, c) for c in customer_ids]
    n = 0
    for path in sorted((settings.home / "mlartifacts").rglob("*.nc")):
        if path.name not in ("bg.nc", "gg.nc"):
            continue
        idata = az.from_netcdf(str(path))
        if "fit_data" not in idata.groups():
            continue
        fit = idata.fit_data.load()
        hit = np.isin(fit["customer_id"].to_numpy().astype(str), gone)
        if not hit.any():
            continue
        kept = fit.isel({fit["customer_id"].dims[0]: ~hit})
        groups = {g: getattr(idata, g).load() for g in idata.groups() if g != "fit_data"}
        rewritten = az.InferenceData(**groups, fit_data=kept)
        rewritten.attrs.update(getattr(idata, "attrs", {}) or {})
        tmp = path.with_suffix(".erase.tmp")
        rewritten.to_netcdf(str(tmp))
        tmp.replace(path)
        n += int(hit.sum())
    return n


def save_bundle(settings: Settings, model: ClvModel, folder: Path) -> Path:
    """Write one version's files (see the module docstring) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    _save_pymc(settings, model.btyd.bg, folder / "bg.nc")
    _save_pymc(settings, model.btyd.gg, folder / "gg.nc")
    spec: dict[str, Any] = {"model": model.kind, "params": model.btyd.params}
    if model.trees is not None:
        model.trees.purchases.save_model(str(folder / "purchases.txt"))
        model.trees.spend.save_model(str(folder / "spend.txt"))
        spec |= {"window": model.trees.window, "rows": model.trees.rows}
        spec["columns"] = model.trees.columns
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=1))
    return folder


def load_bundle(folder: Path) -> ClvModel:
    """A version's files back into a model that predicts as the fitted one did."""
    _quiet_pymc()
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

    spec = json.loads((folder / SPEC_FILE).read_text())
    bg, gg = BetaGeoModel.load(str(folder / "bg.nc")), GammaGammaModel.load(str(folder / "gg.nc"))
    bg.build_model()  # 0.19's load leaves the instance's PyMC model unbuilt
    gg.build_model()
    trees = None
    if spec["model"] == "lightgbm":
        trees = Trees(
            purchases=lgb.Booster(model_file=str(folder / "purchases.txt")),
            spend=lgb.Booster(model_file=str(folder / "spend.txt")),
            window=int(spec["window"]),
            rows=int(spec["rows"]),
            columns=list(spec["columns"]),
        )
    return ClvModel(spec["model"], Btyd(bg, gg, spec["params"]), trees)


def register(
    settings: Settings,
    result: ClvResult,
    fitted: dict[str, ClvModel],
    window: dict[str, str],
    horizon_days: int,
) -> dict[str, dict[str, str]]:
    """One MLflow run per fitted model (validation figures, parameters, files), each a new
    version of ``clv``; the better on the validation window becomes champion."""
    import mlflow

    client = client_for(settings)
    if client.search_registered_models(f"name='{MODEL_NAME}'") == []:
        client.create_registered_model(MODEL_NAME, description="customer lifetime value")
    judged = {v.model: v for v in result.validation}
    out: dict[str, dict[str, str]] = {}
    for kind, model in fitted.items():
        v = judged.get(kind)
        params: dict[str, Any] = {"model": kind, "horizon_days": horizon_days}
        params |= model.btyd.params if kind == "btyd" else {"feature_service": "RFM + clv_v1"}
        with (
            mlflow.start_run(experiment_id=experiment_id(settings, MODEL_NAME), run_name=kind) as r,
            tempfile.TemporaryDirectory() as tmp,
        ):
            mlflow.log_params(params)
            if v is not None:
                figures = v.model_dump(exclude={"model"})
                mlflow.log_metrics({k: float(x) for k, x in figures.items() if np.isfinite(x)})
            mlflow.set_tags({**window, "clv_model": kind, "gate": f"lower {GATE}"})
            mlflow.log_artifacts(str(save_bundle(settings, model, Path(tmp) / "model")), "model")
            source = f"{r.info.artifact_uri}/model"
        version = client.create_model_version(MODEL_NAME, source, r.info.run_id)
        client.set_model_version_tag(MODEL_NAME, version.version, "clv_model", kind)
        out[kind] = {"run_id": r.info.run_id, "version": str(version.version)}
    ranked = sorted(
        out, key=lambda k: (judged[k].mae_purchases if k in judged else np.inf, k != "btyd")
    )
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, out[ranked[0]]["version"])
    for kind in ranked:
        out[kind]["alias"] = CHAMPION if kind == ranked[0] else CHALLENGER
    if len(ranked) > 1:
        client.set_registered_model_alias(MODEL_NAME, CHALLENGER, out[ranked[1]]["version"])
    elif client.get_registered_model(MODEL_NAME).aliases.get(CHALLENGER):
        client.delete_registered_model_alias(MODEL_NAME, CHALLENGER)  # an older run's, stale
    return out


def load_alias(settings: Settings, alias: str = CHAMPION) -> tuple[str, ClvModel]:
    """The version an alias points to, and its model (a :class:`RegistryError` without one)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    client = client_for(settings)
    try:
        version = client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException:
        raise RegistryError(
            f"model: '{MODEL_NAME}' has no {alias}; run `nextbest clv train` first"
        ) from None
    local = download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{version.version}")
    return str(version.version), load_bundle(Path(local))


def promote(settings: Settings) -> Promotion:
    """Make the challenger champion if its validation MAE is lower than the champion's on the
    same validation window (versions fitted on different windows are not comparable: retrain)."""
    from mlflow.exceptions import MlflowException

    client = client_for(settings)
    try:
        challenger = client.get_model_version_by_alias(MODEL_NAME, CHALLENGER)
        champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException:
        raise RegistryError(
            f"model: '{MODEL_NAME}' has no challenger and champion; run `nextbest clv train`"
        ) from None
    new, old = str(challenger.version), str(champion.version)
    result = Promotion(model=MODEL_NAME, promoted=False, challenger_version=new,
                       champion_version=old, previous_champion=old, metric=GATE,
                       challenger_score=None, champion_score=None,
                       reason=f"version {new} is already champion")  # fmt: skip
    if new == old:
        return result
    runs = {v: client.get_run(m.run_id).data for v, m in ((new, challenger), (old, champion))}
    windows = {v: d.tags.get("valid_window") for v, d in runs.items()}
    unjudged = [v for v, d in runs.items() if GATE not in d.metrics]
    if unjudged:  # the trees, when the history before the window was too short for them
        raise RegistryError(
            f"model: clv version {unjudged[0]} was not judged on a validation window "
            "(too short a history for it); it cannot be promoted by the gate"
        )
    if windows[new] != windows[old]:
        raise RegistryError(
            f"model: clv versions {new} and {old} were judged on different validation windows "
            f"({windows[new]} and {windows[old]}); retrain both with `nextbest clv train`"
        )
    result.challenger_score = runs[new].metrics[GATE]
    result.champion_score = runs[old].metrics[GATE]
    result.promoted = result.challenger_score < result.champion_score
    verdict = "beats" if result.promoted else "does not beat"
    result.reason = (
        f"{GATE} {result.challenger_score:.4f} on validation window {windows[new]} "
        f"{verdict} champion v{old}'s {result.champion_score:.4f}"
    )
    if result.promoted:
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, new)
        client.set_registered_model_alias(MODEL_NAME, CHALLENGER, old)
        client.set_model_version_tag(MODEL_NAME, new, "promotion", result.reason)
        result.champion_version = new
    return result
