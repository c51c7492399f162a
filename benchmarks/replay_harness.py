"""What the replay puts around the real decision pipeline: its own ledger, a world with
filled features, the pipeline's clock set to the visit, a bandit that records what it was asked,
and a progress bar.

Split from :mod:`benchmarks.replay` so the driver holds only the visit loop: these isolate the
replay (its own ledger), set it in world time (the clock) or observe it (the recorder).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nextbest.settings import Settings


def progress_bar(label: str = "replay") -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


class Recorder:
    """The bandit as the pipeline sees it, remembering the distributions it answered (in call
    order: a batch asks once per treated request, in request order), so the replay scores
    each decision exactly and checks the ledger against it."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.last: dict[str, float] | None = None
        self.calls: list[dict[str, float]] = []

    @property
    def version(self) -> str:
        return self.policy.version

    def distribution(
        self, features: dict, channel: str, context: dict, allowed: list[str], *scores: Any
    ) -> dict[str, float]:
        self.last = self.policy.distribution(features, channel, context, allowed, *scores)
        self.calls.append(self.last)
        return self.last

    def choose(
        self, features: dict, channel: str, context: dict, allowed: list[str], *scores: Any
    ) -> Any:
        offer, self.last = self.policy.choose(features, channel, context, allowed, *scores)
        self.calls.append(self.last)
        return offer, self.last


def replay_settings(settings: Settings) -> Settings:
    """The project's settings with a ledger of its own: simulated visits never mix with real
    decision logs (and, being a simulation, it commits without waiting for the disk)."""
    from sqlalchemy import event

    from nextbest.db import engine_for

    folder = settings.home / "replay"
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "ledger.db"
    for f in folder.glob("ledger.db*"):
        f.unlink()
    rs = settings.model_copy(update={"ledger_url": f"sqlite:///{db}"})
    engine = engine_for(rs.ledger_db_url)

    @event.listens_for(engine, "connect")
    def _fast(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous=OFF")

    return rs


def ensure_world(settings: Settings, customers: int | None, days: int | None) -> dict[str, Any]:
    """Simulate the world and fill the feature store when they are not there yet."""
    from features.build import build_features
    from features.store import apply_repo, get_store, materialize
    from simulator.world import simulate_world

    done: dict[str, Any] = {}
    if not (settings.world_dir / "people.parquet").exists():
        done["simulate"] = simulate_world(
            customers=customers or settings.customers,
            days=days or settings.days,
            seed=settings.seed,
            out=settings.world_dir,
        )
    if not (settings.feature_dir / "registry.db").exists() or done:
        done["features"] = build_features(settings)
        store = get_store(settings)
        apply_repo(store)
        done["materialize"] = materialize(store)
    return done


def ensure_models(settings: Settings, max_rounds: int = 2000) -> dict[str, str]:
    """Train and promote the churn and uplift models the pipeline scores with, where none is
    promoted yet: without them every offer is worth the same and the replay would measure a
    pipeline no one runs. The versions trained by model, or why one could not be (a world
    too short to label): the replay then runs on the pipeline's fallback, as serving would."""
    from training.datasets import DatasetError
    from training.scoring import MODEL_NAMES, bentoml_models
    from training.train import train_model

    store, trained = bentoml_models(settings), {}
    for name in MODEL_NAMES:
        try:
            store.get(f"{name}:latest")
        except Exception:  # noqa: BLE001 - bentoml's NotFound: nothing promoted yet
            try:
                info = train_model(settings, name, promote=True, max_rounds=max_rounds)
                trained[name] = str(info["version"])
            except DatasetError as exc:
                trained[name] = f"not trained: {exc}"
    return trained


class Clock:
    """The decision pipeline's clock set to the visit being replayed."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def batch_bounds(
    offsets: np.ndarray, window: float, cut_every: Sequence[int]
) -> list[tuple[int, int, int]]:
    """Consecutive visits decided together: (first, end, window number) per batch.

    ``offsets``: each visit's time since the first, in the unit of ``window`` (sorted). A batch
    holds the visits of one window, split where a visit count in ``cut_every`` is reached (a
    retrain, a checkpoint of the curve), so those happen after the same visits as before."""
    if not window > 0:
        raise ValueError(f"window must be > 0, got {window}")
    slot = np.floor(np.asarray(offsets, dtype=float) / window).astype(np.int64)
    n = len(slot)
    starts = set(np.flatnonzero(np.diff(slot)) + 1) | {0}
    for every in cut_every:
        starts |= set(range(every, n, every))
    edges = sorted(starts) + [n]
    return [(a, b, int(slot[a])) for a, b in zip(edges, edges[1:], strict=False) if a < n]


@contextmanager
def timed(spent: dict[str, float], part: str) -> Iterator[None]:
    """Add the seconds the block takes to ``spent[part]``: where a replay's time goes."""
    start = time.perf_counter()
    try:
        yield
    finally:
        spent[part] = spent.get(part, 0.0) + time.perf_counter() - start
