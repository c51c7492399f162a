"""The learning loop measured against the truth: simulated visits through the real pipeline.

The visits of each window of world time (``batch_minutes``, a day by default: ~560 visits in
the default world, which sees ~0.4 visits a minute) go through ``serving.decide.decide_many``
together, each decided at its own time (``at``: its features, caps and ledger row as of the
visit), with the real dependencies (identity graph, Feast online store, promoted models,
ledger) and the bandit; what each customer then buys is drawn from the simulator's response
model and reported, at the visit's time, through the outcome path the channels use
(``serving.actions.record_outcome``). The bandit learns them as the service does
(``serving.learner``: each decision once, from the ledger, once its reward wait has passed;
the wait is the window, so a batch learns every earlier window's decisions and none of its
own) and is retrained from the ledger, OPE-gated and promoted, every ``retrain_every`` visits.

The scores come from the truth, not from the logs: for every treated visit we know each allowed
offer's expected incremental value, so the policy's value is exact given its probabilities,
and so are uniform random, the best single offer for everyone, and the oracle.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any, Literal

import numpy as np

from benchmarks.replay_harness import (
    Clock,
    Recorder,
    batch_bounds,
    ensure_models,
    ensure_world,
    progress_bar,
    replay_settings,
    timed,
)
from benchmarks.replay_results import (
    Checkpoint,
    ReplayResult,
    ReplayTrace,
    gap,
    greedy_value,
    linear_ceiling,
    plot_curve,
    summarise,
)
from features.schema import ID_COLUMNS
from nextbest.settings import Settings


def visit_request(visit: Any) -> Any:
    """The /decide request a channel would send for a simulated visit (what it knows)."""
    from serving.decide import DecideRequest, VisitContext

    ids = {c: getattr(visit, c) for c in ID_COLUMNS if isinstance(getattr(visit, c), str)}
    page = "basket" if visit.open_basket else "home"
    ctx = VisitContext(page=page if visit.channel in ("web", "app") else None)
    return DecideRequest(channel=visit.channel, context=ctx, **ids)


def _drew(response: Any) -> bool:
    """Whether the bandit drew this decision's offer (a treated visit with allowed offers,
    the bandit not failing): these are the decisions it was asked about, in request order."""
    return (
        response.arm == "treatment"
        and bool(response.offers)
        and not any(r.startswith("bandit:") for r in response.reasons)
    )


def _outcomes(
    rng: np.random.Generator,
    p1: np.ndarray,
    p0: np.ndarray,
    shown: int,
    draws: np.ndarray | None = None,
) -> list[tuple[int, str]]:
    """What the customer buys in the window: the shown offer at its treated rate, every other
    product at its untreated rate (offer index, outcome type). ``draws``: the visit's uniform
    draws, one per product (common random numbers: the same offer shown to the same visit
    buys the same products, whatever policy showed it); else drawn from ``rng``."""
    p = p0.copy()
    p[shown] = p1[shown]
    u = rng.random(len(p)) if draws is None else draws
    bought = np.flatnonzero(u < p)
    return [(int(j), "conversion" if j == shown else "revenue") for j in bought]


# the window of world time whose visits are decided together, and the reward wait: a day, the
# service's default wait (Settings.bandit_reward_wait_minutes), so no decision of a batch
# could have learned from another one of it in the service either
BATCH_MINUTES = 60.0 * 24
# decision opportunities (sessions, store visits, calls) per customer per day in the default
# world's history: ~50,000 in 90 days for 2,000 customers
VISITS_PER_CUSTOMER_DAY = 0.28


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


def _ceiling(
    ledger: Any, ids: list[str], values: np.ndarray, allowed: np.ndarray, window: int
) -> float | None:
    """:func:`linear_ceiling` on the features the bandit saw for each treated decision
    (the logged snapshot without identifiers, the channel, the visit context)."""
    from training.bandit import IDENTIFIERS

    if not 0 < window < len(ids):
        return None
    logs = ledger.logs().set_index("decision_id").loc[ids]
    features = [
        {**{k: v for k, v in (s.get("features") or {}).items() if k not in IDENTIFIERS},
         **ctx, "channel": ch}
        for s, ctx, ch in zip(logs["scores"], logs["context"], logs["channel"], strict=True)
    ]  # fmt: skip
    return linear_ceiling(features, values, allowed, window)


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
    batch_minutes: float = BATCH_MINUTES,
    outcomes: Literal["sampled", "expected"] = "sampled",
    span_days: float | None = None,
    plot: bool = True,
    progress: bool = True,
    draws: np.ndarray | None = None,
    trace: ReplayTrace | None = None,
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
    if not batch_minutes > 0:
        raise ValueError(f"batch_minutes must be > 0, got {batch_minutes}")
    from features.identity import graph_for
    from serving.actions import OutcomeRequest, record_outcome
    from serving.decide import decide_many
    from serving.deps import load_deps
    from serving.learner import Learner, learn_matured
    from serving.stages import StageTimes
    from simulator.truth import Truth
    from training.bandit import BanditPolicy
    from training.bandit_ledger import catalog_actions, train_bandit
    from training.bandit_registry import BanditError, load_bandit

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
    ensure_models(settings)
    # the outcomes are reported with the decision; the learner counts them once a batch's
    # window has passed, as the service would after its reward wait
    rs = replay_settings(settings).model_copy(
        update={"bandit_exploration": exploration, "bandit_reward_wait_minutes": batch_minutes}
    )
    rng = np.random.default_rng(settings.seed if seed is None else seed)
    truth = Truth.load(settings.world_dir)
    span = span_days or visits / (VISITS_PER_CUSTOMER_DAY * len(truth.people))
    frame = truth.sample_visits(rng, visits, span_days=span)
    offer_ids = list(truth.catalog.ids)
    col = {o: j for j, o in enumerate(offer_ids)}
    if draws is not None and draws.shape != (visits, len(offer_ids)):
        raise ValueError(f"draws: shape {draws.shape}, expected {(visits, len(offer_ids))}")
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
    # the learner takes decisions in (time, id) order: ids drawn from the seed keep the order
    # of decisions at one time, so a replay is reproducible (``Deps.new_id``)
    ids = random.Random(int(rng.integers(2**31)))
    deps.new_id = lambda: f"{ids.getrandbits(128):032x}"
    origin = frame["at"].iloc[0].to_pydatetime()
    clock = Clock(origin)
    offsets = (frame["at"] - frame["at"].iloc[0]).dt.total_seconds().to_numpy() / 60.0
    deps.clock = clock  # caps and attribution windows run on the visits' time, not the wall's
    deps.learner = Learner(start=clock.at - timedelta(seconds=1))
    champion: Any = None
    allowed = np.zeros(values.shape, dtype=bool)
    probs = np.zeros(values.shape)
    treated = np.zeros(visits, dtype=bool)
    treated_ids: list[str] = []  # their decisions, in visit order
    slots = np.zeros(visits, dtype=np.int64)  # each visit's window of world time
    decision_of: list[str | None] = [None] * visits
    checked = matched = 0
    curve: list[Checkpoint] = []
    retrains: list[dict[str, Any]] = []
    every = max(1, visits // checkpoints)
    stages, spent = StageTimes(), {}
    start, last = time.perf_counter(), 0
    with progress_bar() as bar:
        task = bar.add_task("replay", total=visits, status="", visible=progress)
        for lo, hi, slot in batch_bounds(offsets, batch_minutes, (every, retrain_every)):
            # a batch is decided when its window closes, after the learner's tick: it knows
            # every decision whose reward matured (those of the windows before); each visit is
            # decided, and its purchases reported, at its own time
            clock.at = origin + (slot + 1) * timedelta(minutes=batch_minutes)
            with timed(spent, "learner"):
                learn_matured(deps, clock.at)
            batch_visits = list(frame.iloc[lo:hi].itertuples(index=False))
            slots[lo:hi] = slot
            times = [v.at.to_pydatetime() for v in batch_visits]
            bandit.calls.clear()
            with timed(spent, "decide"):
                responses = decide_many(
                    [visit_request(v) for v in batch_visits], deps, stages, at=times
                )
            drawn = iter(bandit.calls)
            reports: list[OutcomeRequest] = []
            for i, visit, response in zip(range(lo, hi), batch_visits, responses, strict=True):
                if not _drew(response):
                    continue
                dist = next(drawn, None)
                chosen = response.offers[0].offer_id
                if dist is None or chosen not in dist:
                    raise RuntimeError(f"visit {i}: the bandit's draws do not follow the batch")
                for o, p in dist.items():
                    allowed[i, col[o]], probs[i, col[o]] = True, p
                treated[i] = True
                treated_ids.append(response.decision_id)
                decision_of[i] = response.decision_id
                if i % check_every == 0:
                    row = deps.ledger.decision(response.decision_id)
                    checked += 1
                    matched += bool(
                        row is not None
                        and row.probabilities.keys() == dist.keys()
                        and all(abs(row.probabilities[o] - p) < 1e-9 for o, p in dist.items())
                        and abs((row.propensity or 0) - dist[chosen]) < 1e-9
                    )
                j = col[chosen]
                if outcomes == "expected":  # the window's expected value, as one report
                    bought = [(j, "revenue", float(p0[i] @ value - p0[i, j] * value[j]
                                                   + p1[i, j] * (value[j] - cost[j])))]  # fmt: skip
                else:
                    bought = [
                        (k, kind, float(value[k]))
                        for k, kind in _outcomes(
                            rng, p1[i], p0[i], j, None if draws is None else draws[i]
                        )
                    ]
                for k, kind, amount in bought:
                    order = f"{visit.visit_id}:{offer_ids[k]}"  # one purchase, one order
                    reports.append(
                        OutcomeRequest(idempotency_key=order, order_id=order,
                                       decision_id=response.decision_id, type=kind,
                                       offer_id=offer_ids[k], value=amount, ts=times[i - lo])
                    )  # fmt: skip
            if next(drawn, None) is not None:
                raise RuntimeError(f"visits {lo}-{hi}: the bandit drew more than was decided")
            with timed(spent, "outcomes"):
                for report in reports:  # a few per batch: ~5 in 100 visits buy something
                    record_outcome(report, deps)
            if hi % retrain_every == 0 and hi < visits:
                bar.update(task, status="retraining")
                try:  # judged against this replay's last promotion, not an earlier run's
                    with timed(spent, "retrain"):
                        info = train_bandit(rs, promote=True, champion=champion)
                except BanditError as exc:
                    info = {"error": str(exc)}
                if info.get("promoted"):
                    bandit.policy = load_bandit(rs) or bandit.policy
                    champion = load_bandit(rs)  # as promoted: serving goes on learning online
                    # it was trained on every decision so far: online learning resumes after
                    # them (the last visit's time, its decisions at that time handled)
                    deps.learner = Learner(start=times[-1])
                    deps.learner.ids = {
                        r.decision_id for r, t in zip(responses, times, strict=True)
                        if t == times[-1]
                    }  # fmt: skip
                retrains.append({"visits": hi, "serving": bandit.version, **info})
            if hi % every == 0 or hi == visits:
                seg = np.flatnonzero(treated[last:hi]) + last
                if seg.size:
                    pol, rnd, single, orc, _ = summarise(values[seg], allowed[seg], probs[seg])
                    curve.append(Checkpoint(visits=hi, policy=pol, random=rnd,
                                            best_single=single, oracle=orc,
                                            gap_closed=gap(pol, rnd, orc)))  # fmt: skip
                    bar.update(task, status=f"gap closed {curve[-1].gap_closed:.2f}")
                last = hi
            bar.update(task, advance=hi - lo)
    seconds = time.perf_counter() - start
    if trace is not None:
        trace.fill(offer_ids=offer_ids, value=value, cost=cost, values=values, p1=p1, p0=p0,
                   allowed=allowed, probs=probs, treated=treated, slots=slots,
                   decision_ids=decision_of, logs=deps.ledger.logs(), scale=scale,
                   seconds=seconds)  # fmt: skip
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
        model_versions=deps.model_versions(),
        logged_matches_policy=matched / checked if checked else float("nan"),
        greedy_gap_closed=gap(greedy_value(values[tail], probs[tail]), rnd, orc),
        stage_seconds={**stages.seconds, **spent},
        linear_ceiling=_ceiling(deps.ledger, treated_ids, values[treated], allowed[treated],
                                len(tail)),
    )  # fmt: skip
    if plot and curve:
        path = settings.reports_dir / f"replay_{exploration}_{outcomes}.png"
        title = f"Bandit replay ({exploration}, {outcomes} outcomes): gap closed"
        title += f" {result.gap_closed:.2f} after {visits:,} visits"
        result.plot = str(plot_curve(curve, path, title))
    return result
