"""Shared fixtures: every test session gets its own NEXTBEST_HOME, so nothing touches
./.nextbest."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("NEXTBEST_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home of this test's own (``tmp_path / "home"``) for what reads NEXTBEST_HOME (the CLI,
    ``get_settings``), with the cached settings dropped before and after; yields ``tmp_path``
    for the test's other files. Nothing the session's home holds leaks in."""
    from nextbest.settings import get_settings

    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def nextbest_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private home for the whole session; settings are re-read after pointing at it."""
    from nextbest.settings import get_settings

    home = tmp_path_factory.mktemp("nextbest_home")
    os.environ["NEXTBEST_HOME"] = str(home)
    get_settings.cache_clear()
    return home


def materialised_store(settings: Any, world: Path) -> tuple[dict[str, Any], Any]:
    """``world``'s features built, the Feast repo applied and every view loaded into the
    online store up to just after the last snapshot (Feast's warnings silenced): what the
    fixtures that train or read features start from. Returns the build's summary and the
    store."""
    import pandas as pd

    from features.build import build_features
    from features.store import apply_repo, get_store, materialize

    build = build_features(settings, world)
    store = get_store(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_repo(store)
        end = pd.Timestamp(build["snapshots"][-1]).to_pydatetime() + timedelta(seconds=1)
        materialize(store, end=end)
    return build, store


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or a skip that says what is missing."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not here (real data sets: ../shared/data or NEXTBEST_SHARED_DATA)")
    return path


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throw-away database on the PostgreSQL at 127.0.0.1:5432 (the scale-out ledger), dropped
    afterwards; a skip that says so when the server does not answer."""
    from nextbest.db import postgres_unavailable, scratch_postgres

    why = postgres_unavailable()
    if why is not None:
        pytest.skip(why)
    with scratch_postgres("nb_test") as url:
        yield url
