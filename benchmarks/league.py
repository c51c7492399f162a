"""The bandit league: Nextbest's served policy against what a data scientist would use instead,
on the same visits, scored by the simulator's truth (``nextbest bench bandit``).

How the comparison is kept fair and cheap, per seed:
1. Nextbest's policy runs as served: :func:`benchmarks.replay.run_replay` drives the visits
   through the real pipeline (identity, Feast features, holdouts, eligibility, consent, caps,
   uplift scores, the VW bandit, the ledger, the online learner and the retrains), with the
   visit's purchases drawn from fixed uniform ``draws`` (common random numbers).
2. Its trace gives every other policy the same stream: the same treated visits, in the same
   order; the same allowed offers (eligibility, consent and caps as the served run computed
   them; holdout visits are nobody's); the same information (each decision's logged feature
   snapshot, channel, context and the uplift models' scores, which is what the served bandit
   saw); the same feedback (the reward the served learner counts, from the same draws: the
   same offer shown to the same visit buys the same products) with the same delay (a window's
   decisions are learned once it has closed, the served learner's reward wait). Peers do not
   pay for the pipeline on every visit; they only choose among the offers it allowed.
3. Every policy's value is the truth's expected incremental value under its probabilities
   over the last ``window`` visits; gap closed = (policy - random) / (oracle - random).
One asymmetry is kept: contact caps and suppression count the served policy's own shows, so
its choices shape its own later menus while a peer chooses on the menus the served run left
and its choices shape none. Measured, it may flatter the peers: the same VW learner replayed
as a peer closes more than served (docs/benchmarks.md, "Bandit league"), though a check
shows both compute the same distributions from the same data.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.league_peers import (
    VW_EXPLORERS,
    EpsilonGreedy,
    LeagueVisit,
    LinearBandit,
    Peer,
    PropensityValue,
    UniformRandom,
    UpliftGreedy,
    VWPeer,
)
from benchmarks.league_results import (
    LeagueResult,
    best_single_probs,
    bought,
    oracle_probs,
    plot_league,
    rewards,
    score,
    table,
)
from benchmarks.replay_harness import progress_bar
from benchmarks.replay_results import ReplayTrace
from nextbest.settings import Settings


def league_visits(trace: ReplayTrace) -> tuple[np.ndarray, list[LeagueVisit]]:
    """The treated visits (their indices) as the served bandit saw them, from its ledger."""
    from training.bandit import IDENTIFIERS

    idx = np.flatnonzero(trace.treated)
    rows = trace.logs.set_index("decision_id").loc[[trace.decision_ids[i] for i in idx]]
    out = []
    for r in rows.itertuples():
        scores = r.scores or {}
        snapshot = scores.get("features") or {}
        out.append(
            LeagueVisit(
                features={k: v for k, v in snapshot.items() if k not in IDENTIFIERS},
                channel=r.channel,
                context=dict(r.context or {}),
                allowed=tuple(r.probabilities),
                values={k: float(v) for k, v in (scores.get("value") or {}).items()},
                p_treated={k: float(v) for k, v in (scores.get("p_treated") or {}).items()},
            )
        )
    return idx, out


def make_peers(settings: Settings, trace: ReplayTrace, seed: int) -> list[Peer]:
    """The league's learners and rules, seeded per policy (a policy's draws do not depend on
    which others run)."""
    from training.bandit_ledger import catalog_actions

    actions, costs = catalog_actions(settings)
    margins = {o: float(v) - float(c) for o, v, c in
               zip(trace.offer_ids, trace.value, trace.cost, strict=True)}  # fmt: skip
    peers: list[Peer] = [
        UniformRandom(),
        PropensityValue(margins),
        UpliftGreedy(),
        EpsilonGreedy(settings.epsilon),
        LinearBandit("linucb", trace.offer_ids, trace.scale, _seed(seed, "linucb")),
        LinearBandit("lints", trace.offer_ids, trace.scale, _seed(seed, "lints")),
        # a narrower confidence width, which a data scientist would try next (the default
        # one explores for most of a 20,000-visit run)
        LinearBandit("linucb", trace.offer_ids, trace.scale, _seed(seed, "linucb"), alpha=0.1),
    ]
    peers += [VWPeer(n, actions, trace.scale, _seed(seed, n)) for n in VW_EXPLORERS]
    return peers


def _seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


def run_peers(
    peers: Sequence[Peer],
    trace: ReplayTrace,
    draws: np.ndarray,
    idx: np.ndarray,
    visits: list[LeagueVisit],
    seed: int,
    reward: Any,
    on_window: Any = None,
) -> dict[str, np.ndarray]:
    """Each peer's probabilities (treated visits x offers), deciding a window's visits with
    what it learned from the closed windows before, then learning that window's rewards."""
    col = {o: j for j, o in enumerate(trace.offer_ids)}
    k = len(trace.offer_ids)
    probs = {p.name: np.zeros((len(idx), k)) for p in peers}
    rngs = {p.name: np.random.default_rng(_seed(seed, p.name)) for p in peers}
    slots = trace.slots[idx]
    edges = np.flatnonzero(np.diff(slots)) + 1
    for lo, hi in zip(np.r_[0, edges], np.r_[edges, len(idx)], strict=True):
        batch, rows = visits[lo:hi], idx[lo:hi]
        for peer in peers:
            dists = peer.distributions(batch)
            shown = np.empty(hi - lo, dtype=np.int64)
            chosen, logged = [], []
            for n, dist in enumerate(dists):
                names, p = list(dist), np.fromiter(dist.values(), float, len(dist))
                p = p / p.sum()
                pick = int(rngs[peer.name].choice(len(p), p=p))
                probs[peer.name][lo + n, [col[o] for o in names]] = p
                shown[n] = col[names[pick]]
                chosen.append(names[pick])
                logged.append(float(p[pick]))
            got = bought(draws[rows], trace.p1[rows], trace.p0[rows], shown)
            r = rewards(got, shown, trace.value, trace.cost, reward)
            keep = [n for n, v in enumerate(batch) if len(v.allowed) >= 2]  # not forced
            peer.learn([batch[n] for n in keep], [chosen[n] for n in keep],
                       [logged[n] for n in keep], [float(r[n]) for n in keep])  # fmt: skip
        if on_window is not None:
            on_window(hi - lo)
    return probs


def run_league(
    settings: Settings,
    visits: int,
    seeds: Sequence[int],
    *,
    retrain_every: int = 10_000,
    window: int | None = None,
    checkpoints: int = 10,
    plot: bool = True,
    progress: bool = True,
) -> LeagueResult:
    """Every policy on the same visits of every seed (see module doc)."""
    from benchmarks.replay import run_replay
    from offers.catalog import NO_OFFER, load_catalog

    if visits < 10:
        raise ValueError(f"visits must be >= 10, got {visits}")
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    window = window or max(1, min(10_000, visits // 5))
    if not 0 < window <= visits:
        raise ValueError(f"window must be in (0, {visits}], got {window}")
    nextbest = f"nextbest_{settings.bandit_exploration}"
    k = len(load_catalog().ids)
    every = max(1, visits // checkpoints)
    ends = list(range(every, visits + 1, every))
    ends[-1] = visits
    per_seed, curves, spent = [], [], {"served": 0.0, "peers": 0.0}
    matches: list[float] = []
    for seed in seeds:
        draws = np.random.default_rng([seed, 20_017]).random((visits, k))
        trace = ReplayTrace()
        served = run_replay(settings, visits, retrain_every=retrain_every, seed=seed,
                            draws=draws, trace=trace, plot=False, progress=progress)  # fmt: skip
        matches.append(served.logged_matches_policy)
        spent["served"] += trace.seconds
        idx, league = league_visits(trace)
        start = time.perf_counter()
        peers = make_peers(settings, trace, seed)
        with progress_bar("league") as bar:
            task = bar.add_task("league", total=len(idx), status=f"seed {seed}: the peers",
                                visible=progress)  # fmt: skip
            probs = run_peers(peers, trace, draws, idx, league, seed, settings.bandit_reward,
                              lambda n, t=task: bar.update(t, advance=n))  # fmt: skip
        spent["peers"] += time.perf_counter() - start
        values, allowed = trace.values[idx], trace.allowed[idx]
        probs[nextbest] = trace.probs[idx]
        probs["best_single"] = best_single_probs(values, allowed, trace.offer_ids.index(NO_OFFER))
        probs["oracle"] = oracle_probs(values, allowed)
        tail = idx >= visits - window
        per_seed.append({n: score(values[tail], allowed[tail], p[tail]) for n, p in probs.items()})
        starts = [0, *ends[:-1]]
        curves.append({
            n: [score(values[s], allowed[s], p[s])[1] if s.any() else float("nan")
                for s in ((idx >= a) & (idx < b) for a, b in zip(starts, ends, strict=True))]
            for n, p in probs.items()
        })  # fmt: skip
    curve = {n: np.nanmean([c[n] for c in curves], axis=0).tolist() for n in curves[0]}
    result = LeagueResult(
        nextbest=nextbest, policies=table(per_seed), visits=visits, seeds=list(seeds),
        window=window, curve_visits=ends, curve=curve, seconds=spent, plot=None,
        logged_matches_policy=matches,
    )  # fmt: skip
    if plot:
        ours = result.policies[nextbest].mean
        runs = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
        title = f"Bandit league, {visits:,} visits x {runs}: {nextbest} {ours:.2f}"
        path = settings.reports_dir / "bandit_league.png"
        result.plot = str(plot_league(ends, curve, nextbest, path, title))
    return result
