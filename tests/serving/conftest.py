"""Real parts for the service tests: a SQLite ledger and identity graph in a temp folder, the
real catalogue, and a feature reader over a small seeded table of profiles."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from nextbest.db import engine_for
from nextbest.settings import Settings
from offers.catalog import load_catalog
from record.ledger import Ledger
from record.tables import DecisionRow, now
from serving.deps import Deps, FeatureReader

CHANNEL = {"X-API-Key": "channel-dev-key"}  # the development keys of the default settings
ADMIN = {"X-API-Key": "admin-dev-key"}


def decision_row(customer: str = "c") -> DecisionRow:
    """A minimal ledger row for the writer and connection tests."""
    return DecisionRow(
        decision_id=uuid.uuid4().hex,
        ts=now(),
        customer_id=customer,
        channel="web",
        experiment="e",
        arm="treatment",
        offer_id="no_offer",
        propensity=1.0,
    )


PROFILES: dict[str, dict[str, Any]] = {
    # contract ending soon, consents to e-mail: device upgrade, retention, bundles are eligible
    "c-post": {
        "plan": "postpaid_m",
        "tenure_days": 900,
        "months_left_on_contract": 2.0,
        "arpu": 45.0,
        "consent_email": True,
        "consent_sms": False,
    },
    # prepaid, no outbound consent
    "c-pre": {
        "plan": "prepaid",
        "tenure_days": 100,
        "months_left_on_contract": None,
        "arpu": 10.0,
        "consent_email": False,
        "consent_sms": False,
    },
}


def table_reader(profiles: dict[str, dict[str, Any]]) -> FeatureReader:
    """H3's ``read_online`` contract over a dict: unknown customers get no values."""

    def read_online(
        store: Any, service: str, ids: list[str], now: Any = None
    ) -> list[dict[str, Any]]:
        return [{"customer_id": c, **profiles.get(c, {})} for c in ids]

    return FeatureReader(None, read_online)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, global_holdout_share=0.0, experiment_holdout_share=0.0)


@pytest.fixture
def profiles() -> dict[str, dict[str, Any]]:
    """This test's copy of the profile table; a test may add people to it."""
    return {k: dict(v) for k, v in PROFILES.items()}


def register(graph: Any, *customer_ids: str) -> None:
    """Customers the identity graph knows (as if their events had been ingested): /decide,
    /outcome and /profile take only a customer_id the graph has seen (issue 15 item 8)."""
    from features import graph_store as gs

    with graph.engine.begin() as conn:
        col = gs.customers.c.customer_id
        have = {c for (c,) in gs.fetch(conn, col, list(customer_ids), col)}
        new = [c for c in dict.fromkeys(customer_ids) if c not in have]
        gs.write_batch(conn, new, [], set(), now())


def real_deps(settings: Settings, profiles: dict[str, dict[str, Any]]) -> Deps:
    """The service's parts for a test: a real ledger, identity graph and catalogue, the
    profile table as features (its people known to the graph), no models."""
    from features.identity import graph_for

    graph = graph_for(settings)
    register(graph, *profiles)
    return Deps(
        settings=settings,
        ledger=Ledger(engine_for(settings.ledger_db_url)),
        catalog=load_catalog(),
        graph=graph,
        features=table_reader(profiles),
        missing={"models": "nothing promoted yet"},
        rng=random.Random(7),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_deps(request: pytest.FixtureRequest, tmp_path: Path, profiles: dict) -> Deps:
    """The service's parts on an SQLite ledger, then on a PostgreSQL one."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    settings = Settings(home=tmp_path, ledger_url=url, global_holdout_share=0.0,
                        experiment_holdout_share=0.0)  # fmt: skip
    return real_deps(settings, profiles)


@pytest.fixture
def deps(settings: Settings, profiles: dict[str, dict[str, Any]]) -> Deps:
    return real_deps(settings, profiles)


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    """The BentoML service in process (ASGI), once per session: a second instance in the same
    process would register its Prometheus metrics twice."""
    from serving.service import Nextbest

    with TestClient(Nextbest.to_asgi()) as c:
        yield c
