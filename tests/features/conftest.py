"""A small simulated world, built into its own home once per session: features, Feast repo,
materialised online store. Tests that need a live store take ``feature_home``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nextbest.settings import Settings
from tests.conftest import materialised_store


@dataclass
class FeatureHome:
    settings: Settings
    world: Path
    build: dict[str, Any]
    store: Any

    def batch(self) -> pd.DataFrame:
        return pd.read_parquet(Path(self.build["feature_file"]))

    def realtime(self) -> pd.DataFrame:
        return pd.read_parquet(Path(self.build["realtime_file"]))


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 customers x 30 days (a few seconds to simulate)."""
    from simulator.world import simulate_world

    out = tmp_path_factory.mktemp("world_200x30")
    simulate_world(customers=200, days=30, seed=3, out=out)
    return out


@pytest.fixture(scope="session")
def feature_home(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureHome:
    """build -> apply -> materialise into a private home (SQLite online store)."""
    settings = Settings(home=tmp_path_factory.mktemp("features_home"), online_store="sqlite")
    build, store = materialised_store(settings, small_world)
    return FeatureHome(settings=settings, world=small_world, build=build, store=store)
