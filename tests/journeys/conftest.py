"""Real parts for the runner's tests: a SQLite ledger and identity graph in a temp folder, the
real catalogue, a feature reader over a small table of profiles (tests/serving's), and journeys
read as a marketer writes them."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from journeys.definition import Journey
from nextbest.db import engine_for
from nextbest.settings import Settings
from offers.catalog import load_catalog
from record.ledger import Ledger
from serving.deps import Deps
from tests.serving.conftest import PROFILES, table_reader

EXAMPLES = Path(__file__).resolve().parents[2] / "journeys" / "examples"


def journey(text: str | Path, **rules: Any) -> Journey:
    """A journey from YAML text or a file; ``rules`` override its rules."""
    data = yaml.safe_load(text.read_text() if isinstance(text, Path) else text)
    data["rules"] = {**data.get("rules", {}), **rules}
    return Journey.model_validate(data)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, global_holdout_share=0.0, experiment_holdout_share=0.0)


@pytest.fixture
def profiles() -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in PROFILES.items()}


@pytest.fixture
def deps(settings: Settings, profiles: dict[str, dict[str, Any]]) -> Deps:
    from features.identity import graph_for

    settings.epsilon = 0.0  # no model: the real offers tie and one of them is drawn
    return Deps(
        settings=settings,
        ledger=Ledger(engine_for(settings.ledger_db_url)),
        catalog=load_catalog(),
        graph=graph_for(settings),
        features=table_reader(profiles),
        missing={"models": "nothing promoted yet"},
        rng=random.Random(7),
    )
