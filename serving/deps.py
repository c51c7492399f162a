"""Everything a decision depends on, loaded once per worker, each part allowed to be missing.

A missing or broken part (no catalogue, no promoted model, no feature store) is recorded with
its reason instead of stopping the service: decisions then fall back and say why.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import journeys.intent_state  # noqa: F401 - their tables join the ledger's metadata before
import journeys.schedule_state  # noqa: F401 - (and the scheduled entries' state)
import journeys.state  # noqa: F401 - Ledger creates them
from nextbest.db import engine_for
from nextbest.settings import Settings
from record.assignment import StickyAssigner, holdout_shares
from record.ledger import Ledger
from record.tables import now

log = logging.getLogger("nextbest.serving")


class FeatureReader:
    """Online features of one customer through the Feast FeatureServices (H3's read path)."""

    RETRY_SECONDS = 5.0

    def __init__(self, store: Any, read_online: Callable[..., list[dict[str, Any]]]) -> None:
        self.store = store
        self._read = read_online
        self._down_until, self._why = 0.0, ""

    def failing(self) -> str | None:
        """Why reads are paused, while they are."""
        return self._why if time.monotonic() < self._down_until else None

    def read(
        self,
        customer_id: str,
        services: tuple[str, ...] = ("profile_v1",),
        now: datetime | None = None,
    ) -> dict:
        """One read of ``profile_v1`` (a superset of ``churn_v1`` and ``offer_v1`` plus
        consent, which the policy needs): one online lookup per decision, not three."""
        merged: dict[str, Any] = {}
        for service in services:
            merged.update(self.read_many([customer_id], service, now)[0])
        return merged

    def read_many(
        self, customer_ids: list[str], service: str = "profile_v1", now: datetime | None = None
    ) -> list[dict]:
        """Several customers in one call: one query per feature view for all of them.
        ``now``: the decision's time, which the on-demand features count from (minutes since
        the basket changed, abandoned or not); None is the wall clock. The replay decides on
        the world's time, and a basket must be as old then as it was."""
        if time.monotonic() < self._down_until:  # a failing store is not retried per request
            raise RuntimeError(f"unavailable, retrying soon ({self._why})")
        try:
            rows = self._read(self.store, service, customer_ids, now=now)
        except Exception as exc:
            self._down_until = time.monotonic() + self.RETRY_SECONDS
            self._why = f"{type(exc).__name__}: {exc}"[:200]
            raise
        return [{k: v for k, v in row.items() if v is not None} for row in rows]


@dataclass
class Deps:
    """The decision's collaborators; ``None`` means absent, and ``missing`` says why."""

    settings: Settings
    ledger: Ledger
    catalog: Any = None
    graph: Any = None
    features: FeatureReader | None = None
    models: Any = None
    bandit: Any = None
    ingest: Callable[..., dict] | None = None
    missing: dict[str, str] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(secrets.randbits(64)))
    # the decision time: the wall clock, or a simulated one (the replay runs on the world's time)
    clock: Callable[[], datetime] = now
    # the service's incremental bandit learner (``serving.learner.Learner``), when it runs
    learner: Any = None
    # finished erasures this worker has seen (``serving.erasure.resume_pending``)
    erasures_seen: int | None = None

    @cached_property
    def assigner(self) -> StickyAssigner:
        """This worker's holdout assignments: recorded in the ledger, cached in memory."""
        return StickyAssigner(self.ledger, max_cached=self.settings.assignment_cache_size)

    def offers(self) -> list[Any]:
        return list(getattr(self.catalog, "offers", []) or []) if self.catalog is not None else []

    def health(self) -> dict[str, Any]:
        parts = ("catalog", "graph", "features", "models", "bandit", "ingest")
        state = {p: self.missing.get(p, "ok") for p in parts}
        if self.features is not None and self.features.failing():
            state["features"] = f"failing: {self.features.failing()}"
        body = {
            "status": "ok" if all(v == "ok" for v in state.values()) else "degraded",
            "parts": state,
            "model_versions": self.model_versions(),
            # what share of people each experiment holds out, global holdout included
            "holdouts": holdout_shares(self.settings).model_dump(),
        }
        if self.learner is not None:
            body["bandit_learner"] = self.learner.state()
        cold = self.bandit_cold_start()
        if cold:
            body["bandit_cold_start"] = cold
        return body

    def bandit_cold_start(self) -> dict[str, Any]:
        """Catalogue offers the bandit explores as cold-start arms (new since it was trained):
        each with the times it was learned, and the times it must be to leave cold start."""
        if self.bandit is None:
            return {}
        from training.bandit import cold_offers

        offers = cold_offers(self.bandit, [o.id for o in self.offers()])
        if not offers:
            return {}
        policy = getattr(self.bandit, "policy", self.bandit)  # the replay wraps its bandit
        return {
            "offers": offers,
            "share": policy.cold_start_share,
            "until_learned": policy.cold_start_examples,
        }

    def model_versions(self) -> dict[str, str]:
        """The versions every decision records: the promoted models' and the bandit's."""
        versions = dict(getattr(self.models, "versions", {}) or {})
        if self.bandit is not None:
            versions["bandit"] = str(getattr(self.bandit, "version", "unknown"))
        return versions


def health_summary(body: dict[str, Any]) -> dict[str, Any]:
    """``/healthz`` for a caller without an admin key: the status and whether each part is up.
    The reasons (exception text that may hold paths, hosts or URLs), the model versions and the
    learner's state are the admin's; a field added to ``Deps.health`` stays the admin's too
    unless it is added here."""
    summary: dict[str, Any] = {"status": body.get("status", "unknown")}
    parts = body.get("parts")
    if isinstance(parts, dict):
        summary["parts"] = {p: "ok" if v == "ok" else "unavailable" for p, v in parts.items()}
    return summary


def _try(deps: Deps, name: str, load: Callable[[], Any]) -> Any:
    try:
        value = load()
    except Exception as exc:  # noqa: BLE001 - any failure degrades to a fallback, with its reason
        deps.missing[name] = f"{type(exc).__name__}: {exc}"[:300]
        log.warning("dependency %s unavailable: %s", name, deps.missing[name])
        return None
    if value is None:
        deps.missing[name] = "nothing promoted yet"
    return value


def _catalog() -> Any:
    from offers.catalog import load_catalog

    return load_catalog()


def _graph(settings: Settings) -> Any:
    from features.identity import graph_for

    return graph_for(settings)


def _features(settings: Settings) -> FeatureReader:
    from features.store import get_store, read_online

    return FeatureReader(get_store(settings), read_online)


def _models(settings: Settings) -> Any:
    from training.scoring import load_bundle

    return load_bundle(settings)


def _bandit(settings: Settings) -> Any:
    from training.bandit_registry import load_bandit

    return load_bandit(settings)


def _ingest() -> Callable[..., dict]:
    from features.ingest import ingest_event

    return ingest_event


def pinned_models(settings: Settings) -> dict[str, Any]:
    """``BentoModel`` references to the promoted models in the store now, by exact version, for
    the service's class scope: ``bentoml build`` packs those into the Bento (and ``serve``
    resolves them before starting). Nothing promoted, or no store: an empty dict, and the
    service starts anyway with fallback decisions. The models themselves are still loaded
    by ``load_deps`` from ``name:latest``, which in a built Bento are exactly these."""
    try:
        import bentoml

        from training.bandit_registry import MODEL_NAME as BANDIT
        from training.scoring import MODEL_NAMES, bentoml_models

        store = bentoml_models(settings)
    except Exception as exc:  # noqa: BLE001 - no store: nothing to pin
        log.warning("no model store to pin models from: %s", exc)
        return {}
    pinned: dict[str, Any] = {}
    for name in (*MODEL_NAMES, BANDIT):
        try:
            pinned[name] = bentoml.models.BentoModel(store.get(f"{name}:latest").tag)
        except Exception:  # noqa: BLE001, S112 - bentoml.exceptions.NotFound: not promoted yet
            continue
    return pinned


def load_deps(settings: Settings, ledger: Ledger | None = None, **override: Any) -> Deps:
    """Load every part; keyword overrides replace a part (tests pass real ones they built)."""
    ledger = ledger or Ledger(
        engine_for(settings.ledger_db_url),
        synchronous=settings.ledger_synchronous,
        key_salt=settings.identity_salt,
    )
    deps = Deps(settings=settings, ledger=ledger)
    loaders: dict[str, Callable[[], Any]] = {
        "catalog": _catalog,
        "graph": lambda: _graph(settings),
        "features": lambda: _features(settings),
        "models": lambda: _models(settings),
        "bandit": lambda: _bandit(settings),
        "ingest": _ingest,
    }
    for name, load in loaders.items():
        if name in override:
            setattr(deps, name, override[name])
            if override[name] is None:
                deps.missing[name] = "disabled"
        else:
            setattr(deps, name, _try(deps, name, load))
    return deps
