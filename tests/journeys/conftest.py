"""Real parts for the runner's tests: a SQLite ledger and identity graph in a temp folder, the
real catalogue, a feature reader over a small table of profiles (tests/serving's), and journeys
read as a marketer writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from journeys.definition import Journey
from nextbest.settings import Settings
from serving.deps import Deps
from tests.serving.conftest import profiles, real_deps, settings  # noqa: F401 - fixtures

EXAMPLES = Path(__file__).resolve().parents[2] / "journeys" / "examples"


def journey(text: str | Path, **rules: Any) -> Journey:
    """A journey from YAML text or a file; ``rules`` override its rules."""
    data = yaml.safe_load(text.read_text() if isinstance(text, Path) else text)
    data["rules"] = {**data.get("rules", {}), **rules}
    return Journey.model_validate(data)


@pytest.fixture
def deps(settings: Settings, profiles: dict[str, dict[str, Any]]) -> Deps:  # noqa: F811
    settings.epsilon = 0.0  # no model: the real offers tie and one of them is drawn
    return real_deps(settings, profiles)
