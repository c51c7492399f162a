"""Everything a decision depends on, loaded once per worker, each part allowed to be missing.

A missing or broken part (no catalogue, no promoted model, no feature store) is recorded with
its reason instead of stopping the service: decisions then fall back and say why.
"""

from __future__ import annotations

import logging
import random
import secrets
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import journeys.intent_state  # noqa: F401 - their tables join the ledger's metadata before
import journeys.schedule_state  # noqa: F401 - (and the scheduled entries' state)
import journeys.state  # noqa: F401 - Ledger creates them
from nextbest.breaker import Breaker, CircuitOpen
from nextbest.db import engine_for
from nextbest.settings import Settings
from record.assignment import StickyAssigner, holdout_shares
from record.ledger import Ledger
from record.prices import PriceBook, PriceRefresher
from record.tables import now

log = logging.getLogger("nextbest.serving")
# the time a read counts its on-demand fields from: one for all, one per customer, or the wall's
When = datetime | Sequence[datetime] | None


class FeatureReader:
    """Online features of one customer through the Feast FeatureServices (H3's read path),
    behind a circuit breaker: a failing store costs each read one fast refusal, not a wait."""

    def __init__(
        self,
        store: Any,
        read_online: Callable[..., list[dict[str, Any]]],
        breaker: Breaker | None = None,
        timeout: float = 0.1,
    ) -> None:
        """``timeout``: the longest ``read_many_within`` waits for a read (seconds)."""
        self.store = store
        self._read = read_online
        self.breaker = breaker or Breaker("features")
        self.timeout = timeout
        self._pool: ThreadPoolExecutor | None = None

    def failing(self) -> str | None:
        """Why reads are refused, while they are (no call to the store)."""
        return self.breaker.failing()

    def read(
        self,
        customer_id: str,
        services: tuple[str, ...] = ("profile_v2",),
        now: datetime | None = None,
    ) -> dict:
        """One read of ``profile_v2`` (a superset of ``churn_v1`` and ``offer_v1`` plus
        consent, which the policy needs, and the customer's value, which arbitration weighs
        retention by): one online lookup per decision, not three."""
        merged: dict[str, Any] = {}
        for service in services:
            merged.update(self.read_many([customer_id], service, now)[0])
        return merged

    def read_many(
        self, customer_ids: list[str], service: str = "profile_v2", now: When = None
    ) -> list[dict]:
        """Several customers in one call: one query per feature view for all of them.
        ``now``: the decision's time, which the on-demand features count from (minutes since
        the basket changed, abandoned or not); None is the wall clock. The replay decides on
        the world's time, and a basket must be as old then as it was. Raises
        :class:`CircuitOpen` at once while the store is failing (a half-open probe reads)."""
        self.breaker.admit()
        return self._guarded(customer_ids, service, now)

    def read_many_within(
        self, customer_ids: list[str], service: str = "profile_v2", now: When = None
    ) -> list[dict]:
        """``read_many`` waiting at most ``timeout``, for the decision batcher's thread: a hung
        store costs a decision its features, not the batch's wait. While the circuit is open
        it raises at once; the half-open probe runs in the background, and this call raises at
        once too: no decision waits on a store that was just failing."""
        if self.breaker.admit():
            self._executor().submit(self._guarded, customer_ids, service, now)
            raise CircuitOpen(f"features circuit half-open, probing after {self.failing()}")
        work = self._executor().submit(self._read_rows, customer_ids, service, now)
        try:
            rows = work.result(self.timeout)
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"no answer within {self.timeout * 1000:g} ms")
            self.breaker.failure(exc)
            raise exc from None
        self.breaker.success()
        return rows

    def _guarded(self, customer_ids: list[str], service: str, now: When) -> list[dict]:
        try:
            rows = self._read_rows(customer_ids, service, now)
        except Exception as exc:
            self.breaker.failure(exc)
            raise
        self.breaker.success()
        return rows

    def _read_rows(self, customer_ids: list[str], service: str, now: When) -> list[dict]:
        rows = self._read(self.store, service, customer_ids, now=now)
        return [{k: v for k, v in row.items() if v is not None} for row in rows]

    def _executor(self) -> ThreadPoolExecutor:
        """Threads of the feature reads alone: a hung store cannot take the threads the rest of
        the service runs on, and their work cannot delay a read past its timeout."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="features")
        return self._pool


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
    # the bandit's online learner: its ``serving.learner.Learner`` where it learns in process
    # (the learner process, the replay), a ``serving.policy_follow.PolicyFollower`` in a worker
    learner: Any = None
    # finished erasures this worker has seen (``serving.erasure.resume_pending``)
    erasures_seen: int | None = None
    # the outbound LP's dual prices in force (``record.prices.PriceBook``), refreshed by the
    # service: each offer's value is net of its charge before exploration
    prices: PriceBook | None = None
    # a new decision's id; a seeded one makes a run's ids reproducible (tests, replays)
    new_id: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)

    @cached_property
    def assigner(self) -> StickyAssigner:
        """This worker's holdout assignments: recorded in the ledger, cached in memory."""
        return StickyAssigner(self.ledger, max_cached=self.settings.assignment_cache_size)

    def offers(self) -> list[Any]:
        return list(getattr(self.catalog, "offers", []) or []) if self.catalog is not None else []

    def health(self) -> dict[str, Any]:
        parts = ("catalog", "graph", "features", "models", "bandit", "ingest")
        state = {p: self.missing.get(p, "ok") for p in parts}
        why = self.features.failing() if self.features is not None else None
        if why:  # the breaker's state: /healthz never calls the store
            state["features"] = f"circuit {self.features.breaker.state}: {why}"
        problem = getattr(self.learner, "problem", None)  # the learner process's, if followed
        if callable(problem) and (learner_down := problem()):
            state["learner"] = learner_down
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


PRICES_EVERY_SECONDS = 60.0  # a run's prices reach the workers within a minute


def price_refresher(deps: Deps, every: float = PRICES_EVERY_SECONDS) -> PriceRefresher:
    """Reloads ``deps.prices`` from the ledger in a thread of its own (never on the loop that
    answers visits); the budget's consumption is each offer's catalogue cost."""
    costs = {o.id: float(o.cost) for o in deps.offers()}

    def apply(book: PriceBook) -> None:
        deps.prices = book if book else None  # no price in force: nothing to subtract

    return PriceRefresher(deps.ledger.engine, costs, apply, deps.clock, every)


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

    return FeatureReader(get_store(settings), read_online, **feature_guard(settings))


def feature_guard(settings: Settings) -> dict[str, Any]:
    """A FeatureReader's breaker and timeout from the settings."""
    breaker = Breaker(
        "features",
        failures=settings.feature_breaker_failures,
        reset_seconds=settings.feature_breaker_reset_seconds,
    )
    return {"breaker": breaker, "timeout": settings.feature_timeout_ms / 1000}


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
