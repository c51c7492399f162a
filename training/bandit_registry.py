"""The bandit's lifecycle after training: MLflow registry, BentoML model store, loading.

Split from :mod:`training.bandit` so the policy does not depend on MLflow or BentoML; the
saved meta (example format, actions, exploration, reward scale) is checked here on load, so a
model written for another example format is refused instead of silently misread.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from nextbest.settings import Settings
from training.bandit import BanditPolicy


class BanditError(ValueError):
    """Training or loading the bandit cannot go on; the message says why."""


MODEL_NAME = "bandit"
FORMAT_VERSION = 4  # bump whenever format_example changes: old weights would mean other things


def _mlflow(settings: Settings) -> Any:
    """MLflow on this home's stores: tracking and registry (a registry URI left by another
    home would register the bandit there)."""
    import mlflow

    from training.registry import client_for

    client_for(settings)
    if mlflow.get_experiment_by_name(MODEL_NAME) is None:
        art = settings.home / "mlartifacts" / MODEL_NAME
        mlflow.create_experiment(MODEL_NAME, artifact_location=art.as_uri())
    mlflow.set_experiment(MODEL_NAME)
    return mlflow


def policy_meta(policy: BanditPolicy) -> dict[str, Any]:
    """What loading a saved policy needs besides its VW model (also what a learner publishes)."""
    return {
        "format": FORMAT_VERSION,
        "actions": policy.actions,
        "exploration": policy.exploration,
        "reward_scale": policy.reward_scale,
        "cold": policy.cold,  # offers in cold start, with the times each was learned
    }


def register(
    settings: Settings,
    policy: BanditPolicy,
    ope: dict[str, Any],
    n: int,
    promote: bool,
    trained_through: datetime | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log the model to MLflow, register a version (alias ``challenger``), and when promoted
    make it ``champion`` and import it into the BentoML model store the service loads from.
    ``trained_through``: the time of the last logged decision it learned (a run tag too, so
    a later ``nextbest promote bandit`` knows which logs it has not seen); ``tags``: the
    gate's verdict at training time, kept on the run."""
    mlflow = _mlflow(settings)
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run() as run:
        through = {"trained_through": trained_through.isoformat()} if trained_through else {}
        mlflow.set_tags({**(tags or {}), **through})
        model = policy.save(Path(tmp) / "model.vw")
        mlflow.log_params({"exploration": policy.exploration, "examples": n})
        mlflow.log_params({"reward_scale": policy.reward_scale, "vw": policy.args})
        mlflow.log_metrics({f"ope_{k}": float(v.value) for k, v in ope.items()})
        mlflow.log_metrics({f"ope_{k}_ess": float(v.ess or 0.0) for k, v in ope.items()})
        mlflow.log_metrics({f"ope_{k}_ci_low": float(v.ci_low) for k, v in ope.items()})
        mlflow.log_artifact(str(model), artifact_path=MODEL_NAME)
        mlflow.log_dict(policy_meta(policy), f"{MODEL_NAME}/meta.json")
        if not client.search_registered_models(f"name='{MODEL_NAME}'"):
            client.create_registered_model(MODEL_NAME)
        mv = client.create_model_version(
            MODEL_NAME, source=f"{run.info.artifact_uri}/{MODEL_NAME}", run_id=run.info.run_id
        )
    client.set_registered_model_alias(MODEL_NAME, "challenger", mv.version)
    if promote:
        make_champion(settings, policy, str(mv.version), trained_through)
    return str(mv.version)


def make_champion(
    settings: Settings, policy: BanditPolicy, version: str, trained_through: datetime | None
) -> str:
    """Move the ``champion`` alias to a registered version and import it into the BentoML
    model store (what serving loads); the store's tag."""
    _mlflow(settings).MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", version)
    return to_bentoml(settings, policy, version, trained_through)


def registered_run(settings: Settings, alias: str) -> tuple[str, dict[str, str]] | None:
    """The version an alias names and its training run's tags; None when the alias is unset."""
    mlflow = _mlflow(settings)
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(MODEL_NAME, alias)
    except Exception:  # no such model or alias yet
        return None
    return str(mv.version), dict(client.get_run(mv.run_id).data.tags)


def to_bentoml(
    settings: Settings,
    policy: BanditPolicy,
    version: str,
    trained_through: datetime | None = None,
) -> str:
    """Copy the champion into the BentoML model store (what ``serve`` and ``load_bandit`` read),
    with the time of the last decision it learned: a running service that adopts it learns
    online from there on (``serving.learner.adopt_promoted``)."""
    from training.scoring import bentoml_models

    meta = {**policy_meta(policy), "mlflow_version": version}
    if trained_through is not None:  # BentoML's metadata holds no None
        meta["trained_through"] = trained_through.isoformat()
    with bentoml_models(settings).create(MODEL_NAME, metadata=meta) as bento_model:
        policy.save(Path(bento_model.path_of("model.vw")))
        Path(bento_model.path_of("meta.json")).write_text(json.dumps(policy_meta(policy)))
    return str(bento_model.tag)


def cold_start_options(settings: Settings) -> dict[str, Any]:
    """The cold-start knobs of a policy built or loaded under ``settings``."""
    return {
        "cold_start_share": settings.bandit_cold_start_share,
        "cold_start_examples": settings.bandit_cold_start_examples,
    }


def _from_folder(
    folder: Path, version: str, seed: int, settings: Settings | None = None
) -> BanditPolicy:
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise BanditError(
            f"{version}: written with example format {meta.get('format')}, this code reads "
            f"format {FORMAT_VERSION}; retrain with `nextbest train bandit --promote`"
        )
    return BanditPolicy(
        meta["actions"],
        version=version,
        model_path=folder / "model.vw",
        exploration=meta["exploration"],
        reward_scale=meta["reward_scale"],
        seed=seed,
        cold=meta.get("cold"),  # none before cold starts were recorded
        **cold_start_options(settings or Settings()),
    )


def _promoted(settings: Settings) -> tuple[Any, str, datetime | None] | None:
    """The promoted bandit in the BentoML store: the store entry, its version as decisions
    record it, and the time of the last decision it learned; None when none is promoted."""
    from training.scoring import bentoml_models

    try:
        bento_model = bentoml_models(settings).get(f"{MODEL_NAME}:latest")
    except Exception:  # bentoml.exceptions.NotFound: nothing promoted yet
        return None
    meta = bento_model.info.metadata
    through = meta.get("trained_through")
    version = f"{MODEL_NAME}:{meta.get('mlflow_version', '?')}"
    return bento_model, version, datetime.fromisoformat(through) if through else None


def load_bandit(settings: Settings) -> BanditPolicy | None:
    """The promoted bandit from the BentoML model store, or None when none is promoted."""
    found = _promoted(settings)
    if found is None:
        return None
    bento_model, version, through = found
    folder = Path(bento_model.path_of("model.vw")).parent
    policy = _from_folder(folder, version, settings.seed, settings)
    policy.trained_through = through
    return policy


def promoted_version(settings: Settings) -> str | None:
    """The promoted bandit's version (as decisions record it), read from the store's metadata
    without loading the model; None when none is promoted."""
    found = _promoted(settings)
    return found[1] if found else None


def load_registered(settings: Settings, alias: str) -> BanditPolicy | None:
    """A registered version by alias (``challenger``/``champion``), straight from MLflow."""
    mlflow = _mlflow(settings)
    try:
        mv = mlflow.MlflowClient().get_model_version_by_alias(MODEL_NAME, alias)
    except Exception:  # no such model or alias yet
        return None
    folder = Path(mlflow.artifacts.download_artifacts(mv.source))
    return _from_folder(folder, f"{MODEL_NAME}:{mv.version}", settings.seed, settings)
