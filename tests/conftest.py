"""Shared fixtures: every test session gets its own NEXTBEST_HOME, so nothing touches
./.nextbest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("NEXTBEST_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def nextbest_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private home for the whole session; settings are re-read after pointing at it."""
    from nextbest.settings import get_settings

    home = tmp_path_factory.mktemp("nextbest_home")
    os.environ["NEXTBEST_HOME"] = str(home)
    get_settings.cache_clear()
    return home


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or a skip that says what is missing."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not here (real data sets: ../shared/data or NEXTBEST_SHARED_DATA)")
    return path
