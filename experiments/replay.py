"""The learning loop measured against the truth: simulated visits through the real pipeline.

Each visit goes through ``serving.decide.decide`` with the real dependencies (identity graph,
Feast online store, promoted models, ledger) and the bandit; what the customer then buys is
drawn from the simulator's response model and reported through the outcome path the channels
use (``serving.actions.record_outcome``). The bandit learns each outcome as it arrives and is
retrained from the ledger, OPE-gated and promoted, every ``retrain_every`` visits.

The scores come from the truth, not from the logs: for every treated visit we know each allowed
offer's expected incremental value, so the policy's value is exact given its probabilities,
and so are uniform random, the best single offer for everyone, and the oracle.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nextbest.settings import Settings


class Checkpoint(BaseModel):
    """Values per treated visit over the window of visits ending at ``visits``."""

    visits: int
    policy: float
    random: float
    best_single: float
    oracle: float
    gap_closed: float


class ReplayResult(BaseModel):
    visits: int
    treated_visits: int
    exploration: str
    outcomes: str
    retrain_every: int
    policy: float  # over the last ``window`` treated visits
    random: float
    best_single: float
    best_single_offer: str
    oracle: float
    gap_closed: float
    window: int
    curve: list[Checkpoint]
    retrains: list[dict[str, Any]]
    seconds: float
    visits_per_second: float
    plot: str | None
    logged_matches_policy: float  # share of treated decisions whose logged probabilities
    # equal the bandit's distribution for the same visit


def gap(policy: float, random: float, oracle: float) -> float:
    """Share of the random-to-oracle gap closed (1 = oracle, 0 = no better than random)."""
    return (policy - random) / (oracle - random) if oracle > random else float("nan")


def summarise(
    values: np.ndarray, allowed: np.ndarray, policy_probs: np.ndarray
) -> tuple[float, float, float, float, int]:
    """Per-visit value of the policy, uniform random, the best single offer and the oracle.

    ``values`` (visits x offers) holds each offer's true incremental value, ``allowed`` which
    offers the pipeline allowed, ``policy_probs`` the logged probabilities. The best single
    offer shows one offer to everyone it is allowed for, and nothing (value 0) otherwise.
    """
    v, a, p = values, allowed, policy_probs
    k = a.sum(axis=1)
    policy = float((p * v).sum(axis=1).mean())
    random = float((np.where(a, v, 0).sum(axis=1) / k).mean())
    oracle = float(np.where(a, v, -np.inf).max(axis=1).mean())
    single = np.where(a, v, 0.0).mean(axis=0)
    best = int(np.argmax(single))
    return policy, random, float(single[best]), oracle, best


def plot_curve(curve: list[Checkpoint], path: Path, title: str) -> Path:
    """Learning curve (value per visit vs visits) as a PNG, without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [c.visits for c in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [c.oracle for c in curve], "k--", label="oracle")
    ax.plot(x, [c.policy for c in curve], "C0-o", ms=3, label="learned policy (bandit)")
    ax.plot(x, [c.best_single for c in curve], "C2:", label="best single offer")
    ax.plot(x, [c.random for c in curve], "C3-.", label="uniform random")
    ax.set_xlabel("visits")
    ax.set_ylabel("incremental value per visit (truth)")
    ax.set_title(title)
    ax.legend(loc="best", framealpha=0.9)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


class Recorder:
    """The bandit as the pipeline sees it, remembering what it was last asked and answered,
    so the replay learns from exactly the inputs of each decision and can check the ledger."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.last: tuple[dict, str, dict, list[str], dict[str, float], Any] | None = None

    @property
    def version(self) -> str:
        return self.policy.version

    def distribution(
        self, features: dict, channel: str, context: dict, allowed: list[str], scores: Any = None
    ) -> dict[str, float]:
        probs = self.policy.distribution(features, channel, context, allowed, scores)
        self.last = (dict(features), channel, dict(context), list(allowed), probs, scores)
        return probs

    def choose(
        self, features: dict, channel: str, context: dict, allowed: list[str], scores: Any = None
    ) -> Any:
        offer, probs = self.policy.choose(features, channel, context, allowed, scores)
        self.last = (dict(features), channel, dict(context), list(allowed), probs, scores)
        return offer, probs


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


def _request(visit: Any) -> Any:
    from serving.decide import DecideRequest, VisitContext

    ids = {c: getattr(visit, c) for c in ID_COLUMNS if isinstance(getattr(visit, c), str)}
    page = "basket" if visit.open_basket else "home"
    ctx = VisitContext(page=page if visit.channel in ("web", "app") else None)
    return DecideRequest(channel=visit.channel, context=ctx, **ids)


def _outcomes(
    rng: np.random.Generator, p1: np.ndarray, p0: np.ndarray, shown: int
) -> list[tuple[int, str]]:
    """What the customer buys in the window: the shown offer at its treated rate, every other
    product at its untreated rate (offer index, outcome type)."""
    p = p0.copy()
    p[shown] = p1[shown]
    bought = np.flatnonzero(rng.random(len(p)) < p)
    return [(int(j), "conversion" if j == shown else "revenue") for j in bought]


ID_COLUMNS = ("email", "phone", "loyalty_id", "login_id", "cookie_id")
# decision opportunities (sessions, store visits, calls) per customer per day in the default
# world's history: ~50,000 in 90 days for 2,000 customers
VISITS_PER_CUSTOMER_DAY = 0.28


class Clock:
    """The decision pipeline's clock set to the visit being replayed."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def _truth_matrices(truth: Any, frame: Any, offer_ids: list[str]) -> tuple[np.ndarray, ...]:
    """(p_treated, p_untreated, incremental value) for every visit x offer, from the truth."""
    n, k = len(frame), len(offer_ids)
    rep = lambda col: np.repeat(frame[col].to_numpy(), k)  # noqa: E731
    p1, p0 = truth.conversion_probs(
        rep("person_id"), rep("at"), rep("channel"),
        np.tile(np.asarray(offer_ids, dtype=object), n), rep("open_basket").astype(bool),
    )  # fmt: skip
    value = np.array([float(truth.catalog.get(o).value) for o in offer_ids])
    cost = np.array([float(truth.catalog.get(o).cost) for o in offer_ids])
    p1, p0 = p1.reshape(n, k), p0.reshape(n, k)
    return p1, p0, p1 * (value - cost) - p0 * value, value, cost


def run_replay(
    settings: Settings,
    visits: int,
    *,
    retrain_every: int = 10_000,
    exploration: str | None = None,
    seed: int | None = None,
    checkpoints: int = 20,
    window: int | None = None,
    customers: int | None = None,
    days: int | None = None,
    check_every: int = 25,
    outcomes: Literal["sampled", "expected"] = "sampled",
    span_days: float | None = None,
    plot: bool = True,
    progress: bool = True,
) -> ReplayResult:
    """Drive ``visits`` simulated visits through the real decision pipeline (see module doc).

    ``outcomes="sampled"`` reports the purchases the truth draws; ``"expected"`` reports each
    decision's expected window value instead (same path, same reward, no sampling noise), which
    separates what the learner can learn from how noisy a world's conversions are.

    The visits arrive over ``span_days`` of world time (default: at the world's own visit rate)
    and the pipeline runs on that clock: contact caps (2-4 shows of an offer per 30 days) then
    bind as they would live, instead of every visit of the replay falling in one cap window.
    """
    if span_days is not None and not span_days > 0:
        raise ValueError(f"span_days must be > 0, got {span_days}")
    from features.identity import graph_for
    from serving.actions import OutcomeRequest, record_outcome
    from serving.decide import decide
    from serving.deps import load_deps
    from simulator.truth import Truth
    from training.bandit import (
        BanditError,
        BanditPolicy,
        catalog_actions,
        load_bandit,
        train_bandit,
    )

    if visits < 1:
        raise ValueError(f"visits must be >= 1, got {visits}")
    if retrain_every < 1:
        raise ValueError(f"retrain_every must be >= 1, got {retrain_every}")
    if outcomes not in ("sampled", "expected"):
        raise ValueError(f"outcomes: {outcomes!r} is not one of sampled, expected")
    exploration = exploration or settings.bandit_exploration
    if exploration not in ("epsilon", "squarecb"):
        raise ValueError(f"exploration: {exploration!r} is not one of epsilon, squarecb")
    ensure_world(settings, customers, days)
    rs = replay_settings(settings).model_copy(update={"bandit_exploration": exploration})
    rng = np.random.default_rng(settings.seed if seed is None else seed)
    truth = Truth.load(settings.world_dir)
    span = span_days or visits / (VISITS_PER_CUSTOMER_DAY * len(truth.people))
    frame = truth.sample_visits(rng, visits, span_days=span)
    offer_ids = list(truth.catalog.ids)
    col = {o: j for j, o in enumerate(offer_ids)}
    p1, p0, values, value, cost = _truth_matrices(truth, frame, offer_ids)
    actions, _ = catalog_actions(settings)
    scale = float(np.median(value[value > 0]))
    bandit = Recorder(
        BanditPolicy(actions, version="replay:0", exploration=exploration,  # type: ignore[arg-type]
                     reward_scale=scale, seed=int(rng.integers(2**31)), epsilon=rs.epsilon)
    )  # fmt: skip
    # the identity graph lives in the project's ledger database: resolve against it
    deps = load_deps(rs, bandit=bandit, graph=graph_for(settings))
    deps.rng = random.Random(int(rng.integers(2**31)))  # the pipeline's draws, reproducible
    clock = Clock(frame["at"].iloc[0].to_pydatetime())
    deps.clock = clock  # caps and attribution windows run on the visits' time, not the wall's
    champion: Any = None
    allowed = np.zeros(values.shape, dtype=bool)
    probs = np.zeros(values.shape)
    treated = np.zeros(visits, dtype=bool)
    checked = matched = 0
    curve: list[Checkpoint] = []
    retrains: list[dict[str, Any]] = []
    every = max(1, visits // checkpoints)
    start, last = time.perf_counter(), 0
    with progress_bar() as bar:
        task = bar.add_task("replay", total=visits, status="", visible=progress)
        for i, visit in enumerate(frame.itertuples(index=False)):
            bandit.last = None
            clock.at = visit.at.to_pydatetime()
            response = decide(_request(visit), deps)
            if bandit.last is not None and response.offers:
                feats, channel, context, allowed_ids, dist, scores = bandit.last
                chosen = response.offers[0].offer_id
                for o, p in dist.items():
                    allowed[i, col[o]], probs[i, col[o]] = True, p
                treated[i] = True
                if i % check_every == 0:
                    row = deps.ledger.decision(response.decision_id)
                    checked += 1
                    matched += bool(
                        row is not None
                        and row.probabilities.keys() == dist.keys()
                        and all(abs(row.probabilities[o] - p) < 1e-9 for o, p in dist.items())
                        and abs((row.propensity or 0) - dist[chosen]) < 1e-9
                    )
                reward = 0.0
                if outcomes == "expected":  # the window's expected value, as one report
                    j = col[chosen]
                    bought = [
                        (
                            j,
                            "revenue",
                            float(
                                p0[i] @ value
                                - p0[i, j] * value[j]
                                + p1[i, j] * (value[j] - cost[j])
                            ),
                        )
                    ]
                else:
                    bought = [
                        (j, kind, float(value[j]))
                        for j, kind in _outcomes(rng, p1[i], p0[i], col[chosen])
                    ]
                for j, kind, amount in bought:
                    record_outcome(
                        OutcomeRequest(idempotency_key=f"{visit.visit_id}:{offer_ids[j]}",
                                       decision_id=response.decision_id, type=kind,
                                       value=amount, ts=clock.at),
                        deps,
                    )  # fmt: skip
                    reward += amount - (cost[j] if kind == "conversion" else 0.0)
                bandit.policy.learn(
                    feats, channel, context, allowed_ids, chosen, dist[chosen], reward, scores
                )
            if (i + 1) % retrain_every == 0 and i + 1 < visits:
                bar.update(task, status="retraining")
                try:  # judged against this replay's last promotion, not an earlier run's
                    info = train_bandit(rs, promote=True, champion=champion)
                except BanditError as exc:
                    info = {"error": str(exc)}
                if info.get("promoted"):
                    bandit.policy = load_bandit(rs) or bandit.policy
                    champion = load_bandit(rs)  # as promoted: serving goes on learning online
                retrains.append({"visits": i + 1, "serving": bandit.version, **info})
            if (i + 1) % every == 0 or i + 1 == visits:
                seg = np.flatnonzero(treated[last : i + 1]) + last
                if seg.size:
                    pol, rnd, single, orc, _ = summarise(values[seg], allowed[seg], probs[seg])
                    curve.append(Checkpoint(visits=i + 1, policy=pol, random=rnd,
                                            best_single=single, oracle=orc,
                                            gap_closed=gap(pol, rnd, orc)))  # fmt: skip
                    bar.update(task, status=f"gap closed {curve[-1].gap_closed:.2f}")
                last = i + 1
            bar.update(task, advance=1)
    seconds = time.perf_counter() - start
    window = window or max(1, min(10_000, visits // 5))
    tail = np.flatnonzero(treated[visits - window :]) + visits - window
    pol, rnd, single, orc, best = summarise(values[tail], allowed[tail], probs[tail])
    result = ReplayResult(
        visits=visits,
        treated_visits=int(treated.sum()),
        exploration=exploration,
        outcomes=outcomes,
        retrain_every=retrain_every,
        policy=pol,
        random=rnd,
        best_single=single,
        best_single_offer=offer_ids[best],
        oracle=orc,
        gap_closed=gap(pol, rnd, orc),
        window=window,
        curve=curve,
        retrains=retrains,
        seconds=seconds,
        visits_per_second=visits / seconds,
        plot=None,
        logged_matches_policy=matched / checked if checked else float("nan"),
    )
    if plot and curve:
        path = settings.reports_dir / f"replay_{exploration}_{outcomes}.png"
        title = f"Bandit replay ({exploration}, {outcomes} outcomes): gap closed"
        title += f" {result.gap_closed:.2f} after {visits:,} visits"
        result.plot = str(plot_curve(curve, path, title))
    return result
