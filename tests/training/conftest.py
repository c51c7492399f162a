"""One small simulated world per session, trained end to end: simulate -> features build ->
Feast apply + materialise -> train churn and propensity -> register -> promote. Tests of
datasets, the gate and train/serve consistency read from it (real Feast, MLflow, BentoML)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nextbest.settings import Settings
from tests.conftest import materialised_store


@dataclass
class TrainedWorld:
    settings: Settings
    world: Path
    build: dict[str, Any]
    store: Any
    churn: dict[str, Any]
    propensity: dict[str, Any]


@pytest.fixture(scope="session")
def trained_world(tmp_path_factory: pytest.TempPathFactory) -> TrainedWorld:
    """600 customers x 80 days: enough for a 30-day churn label window after the training
    snapshots and for treatment and holdout exposures on both sides of the time split."""
    from simulator.world import simulate_world
    from training.train import train_model

    settings = Settings(home=tmp_path_factory.mktemp("training_home"))
    world = settings.world_dir
    simulate_world(customers=600, days=80, seed=5, out=world)
    build, store = materialised_store(settings, world)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        churn = train_model(settings, "churn", promote=True, max_rounds=80)
        propensity = train_model(settings, "propensity", promote=True, max_rounds=80)
    return TrainedWorld(settings, world, build, store, churn, propensity)
