"""A built Bento carries the promoted models and serves them from its own store, with no
project home: what a container gets."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from serving import run
from serving.bento import build_bento
from tests.serving.conftest import ADMIN
from training.scoring import bentoml_models


@pytest.mark.slow
def test_bento_carries_and_serves_the_champions(trained_world, tmp_path: Path) -> None:  # noqa: ANN001
    settings = trained_world.settings
    built = build_bento(settings)
    store = bentoml_models(settings)
    champions = {str(store.get(f"{m}:latest").tag) for m in ("churn", "propensity")}
    assert champions <= set(built["models"]), built

    empty_home = settings.model_copy(update={"home": tmp_path / "elsewhere"})
    log = tmp_path / "bento.log"
    # the Bento's store is the one BENTOML_HOME names; the project home has nothing in it
    with run.served(empty_home, built["tag"], log, BENTOML_HOME=str(settings.bentoml_home)) as base:
        health = httpx.get(f"{base}/healthz", headers=ADMIN).json()  # with the reasons
    assert health["parts"]["models"] == "ok", (health, log.read_text()[-2000:])
    assert set(health["model_versions"]) >= {"churn", "propensity"}
