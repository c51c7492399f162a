"""The bandit league: common random numbers, true probabilities, the feedback delay, the table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.league import run_peers
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
    best_single_probs,
    bought,
    oracle_probs,
    rewards,
    score,
    table,
)
from benchmarks.replay_results import ReplayTrace

OFFERS = ["a", "b", "c", "no_offer"]


def test_crn_outcomes_and_rewards_by_hand() -> None:
    draws = np.array([[0.10, 0.50, 0.90], [0.30, 0.05, 0.70]])
    p1 = np.array([[0.20, 0.60, 0.95], [0.40, 0.10, 0.80]])
    p0 = np.array([[0.05, 0.40, 0.50], [0.20, 0.01, 0.90]])
    value, cost = np.array([10.0, 20.0, 30.0]), np.array([1.0, 2.0, 3.0])
    got = bought(draws, p1, p0, np.array([0, 2]))
    # visit 0 shown a: a treated (0.10 < 0.20), b untreated (0.50 >= 0.40), c (0.90 >= 0.50)
    # visit 1 shown c: a (0.30 >= 0.20), b (0.05 >= 0.01), c treated (0.70 < 0.80)
    assert got.tolist() == [[True, False, False], [False, False, True]]
    assert rewards(got, np.array([0, 2]), value, cost, "spend").tolist() == [9.0, 27.0]
    assert rewards(got, np.array([0, 2]), value, cost, "conversion").tolist() == [9.0, 27.0]
    # shown b on visit 0: b converts only untreated... b treated 0.60 > 0.50: bought; a at its
    # untreated rate 0.05 < 0.10: not; spend counts b's value minus b's cost
    got_b = bought(draws[:1], p1[:1], p0[:1], np.array([1]))
    assert got_b.tolist() == [[False, True, False]]
    assert rewards(got_b, np.array([1]), value, cost, "spend").tolist() == [18.0]


def test_crn_gives_identical_outcomes_to_identical_choices() -> None:
    rng = np.random.default_rng(0)
    draws, p1, p0 = rng.random((500, 4)), rng.random((500, 4)) * 0.3, rng.random((500, 4)) * 0.3
    first = rng.integers(0, 4, 500)
    second = np.where(rng.random(500) < 0.5, first, rng.integers(0, 4, 500))
    same = first == second
    a, b = bought(draws, p1, p0, first), bought(draws, p1, p0, second)
    assert (a[same] == b[same]).all()
    assert (a[~same] != b[~same]).any()  # different choices do draw differently
    value, cost = np.array([5.0, 7.0, 9.0, 0.0]), np.array([1.0, 1.0, 2.0, 0.0])
    ra, rb = rewards(a, first, value, cost, "spend"), rewards(b, second, value, cost, "spend")
    assert (ra[same] == rb[same]).all()


def _world(n: int = 1200, seed: int = 0) -> tuple[ReplayTrace, np.ndarray, list[LeagueVisit]]:
    """Offer a is worth more the larger x, b the smaller, c a little for all, no_offer 0; the
    model scores are the truth plus noise; windows of 100 visits."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    p0 = np.column_stack([np.full((n, 3), 0.05), np.zeros(n)])
    p1 = p0.copy()
    p1[:, 0] = np.clip(0.05 + 0.08 * x, 0, 1)
    p1[:, 1] = np.clip(0.05 - 0.08 * x, 0, 1)
    p1[:, 2] = 0.07
    value, cost = np.array([20.0, 20.0, 20.0, 0.0]), np.zeros(4)
    values = p1 * (value - cost) - p0 * value
    allowed = rng.random((n, 4)) < 0.8
    allowed[:, 3] = True
    trace = ReplayTrace()
    trace.fill(offer_ids=OFFERS, value=value, cost=cost, values=values, p1=p1, p0=p0,
               allowed=allowed, probs=np.zeros((n, 4)), treated=np.ones(n, dtype=bool),
               slots=np.arange(n) // 100, decision_ids=[None] * n, scale=20.0)  # fmt: skip
    visits = [
        LeagueVisit(
            features={"x": float(x[i]), "segment": "s" if x[i] > 1 else "t"},
            channel="web",
            context={"page": "home"},
            allowed=tuple(o for o, ok in zip(OFFERS, allowed[i], strict=True) if ok),
            values={
                o: float(values[i, j] + rng.normal(0, 0.3))
                for j, o in enumerate(OFFERS)
                if allowed[i, j]
            },  # fmt: skip
            p_treated={o: float(p1[i, j]) for j, o in enumerate(OFFERS) if allowed[i, j]},
        )
        for i in range(n)
    ]
    return trace, rng.random((n, 4)), visits


def _peers() -> list[Peer]:
    actions = {o: {"kind": "device" if o == "a" else "plan"} for o in OFFERS}
    margins = {"a": 20.0, "b": 20.0, "c": 20.0, "no_offer": 0.0}
    return [
        UniformRandom(),
        PropensityValue(margins),
        UpliftGreedy(),
        EpsilonGreedy(0.1),
        LinearBandit("linucb", OFFERS, 20.0, seed=1),
        LinearBandit("lints", OFFERS, 20.0, seed=2, draws=16),
        *(VWPeer(n, actions, 20.0, seed=3) for n in VW_EXPLORERS),
    ]


def test_every_peer_logs_a_distribution_over_the_allowed_offers() -> None:
    """Before and after learning, each policy's probabilities are >= 0, zero outside the
    allowed set and sum to 1 over it: the propensity the league draws with is the true one."""
    trace, draws, visits = _world(600)
    idx = np.arange(600)
    peers = _peers()
    probs = run_peers(peers, trace, draws, idx, visits, seed=4, reward="spend")
    for peer in peers:
        p = probs[peer.name]
        assert (p >= 0).all() and (p[~trace.allowed] == 0).all(), peer.name
        assert np.allclose(p.sum(axis=1), 1.0), peer.name
        late = peer.distributions(visits[-5:])  # after learning: the same holds
        for v, d in zip(visits[-5:], late, strict=True):
            assert list(d) == list(v.allowed) and sum(d.values()) == pytest.approx(1.0)
    # the learners that explore by randomising do randomise somewhere
    for name in ("lin_thompson", "vw_epsilon", "vw_squarecb", "uniform_random"):
        assert ((probs[name] > 0) & (probs[name] < 1)).any(), name


def test_learners_find_the_planted_effect_and_the_oracle_bounds_them() -> None:
    trace, draws, visits = _world(1200)
    idx = np.arange(1200)
    peers = [LinearBandit("linucb", OFFERS, 20.0, seed=1, alpha=0.1), UpliftGreedy()]
    probs = run_peers(peers, trace, draws, idx, visits, seed=4, reward="spend")
    tail = idx >= 800
    v, a = trace.values[tail], trace.allowed[tail]
    probs["oracle"] = oracle_probs(trace.values, trace.allowed)
    probs["uniform_random"] = UniformRandomProbs(trace.allowed)
    probs["best_single"] = best_single_probs(trace.values, trace.allowed, fallback=3)
    got = {n: score(v, a, p[tail]) for n, p in probs.items()}
    assert got["oracle"][1] == pytest.approx(1.0)
    assert got["uniform_random"][1] == pytest.approx(0.0, abs=1e-12)
    assert all(got["oracle"][0] >= g[0] - 1e-12 for g in got.values())
    assert got["linucb_alpha0.1"][1] > 0.3, got  # x tells a from b: a linear model learns it
    assert got["uplift_greedy"][1] > 0.7, got  # scores = truth + small noise


def UniformRandomProbs(allowed: np.ndarray) -> np.ndarray:  # noqa: N802 - a policy's name
    return allowed / allowed.sum(axis=1, keepdims=True)


class _Spy(UniformRandom):
    """Records which windows it had learned each time it was asked, and its rewards."""

    name = "spy"

    def __init__(self, slots: np.ndarray) -> None:
        self.slots, self.seen, self.asked, self.rewards, self.shown = slots, 0, [], [], []

    def distributions(self, visits):
        self.asked.append((len(visits), self.seen))
        return super().distributions(visits)

    def learn(self, visits, shown, probabilities, rewards):
        self.seen += len(visits)
        self.rewards += list(rewards)
        self.shown += list(shown)
        assert all(0 < p <= 1 for p in probabilities)


def test_peers_learn_a_window_only_after_it_closed_and_share_the_draws() -> None:
    trace, draws, visits = _world(500)
    trace.allowed[:] = False
    trace.allowed[:, 0] = trace.allowed[:, 3] = True  # two offers, nothing forced
    visits = [LeagueVisit(v.features, v.channel, v.context, ("a", "no_offer"), {}, {})
              for v in visits]  # fmt: skip
    spies = [_Spy(trace.slots), _Spy(trace.slots)]
    spies[1].name = "twin"
    run_peers(spies, trace, draws, np.arange(500), visits, seed=4, reward="spend")
    # window w (100 visits each) is decided knowing exactly the windows before it
    assert spies[0].asked == [(100, 100 * w) for w in range(5)]
    # two random peers (each its own draws) choose differently somewhere; where they agree,
    # their rewards agree (common random numbers), and differ somewhere where they do not
    same = np.array(spies[0].shown) == np.array(spies[1].shown)
    r0, r1 = np.array(spies[0].rewards), np.array(spies[1].rewards)
    assert len(r0) == 500 and 0 < same.sum() < 500
    assert (r0[same] == r1[same]).all() and (r0[~same] != r1[~same]).any()


def test_table_has_the_issue_shape() -> None:
    per_seed = [{"x": (0.5, 0.2), "y": (0.7, 0.4)}, {"x": (0.6, 0.4), "y": (0.8, 0.6)}]
    out = {n: s.model_dump() for n, s in table(per_seed).items()}
    assert out["x"] == {"gap_closed": [0.2, 0.4], "mean": pytest.approx(0.3),
                        "per_visit": [0.5, 0.6]}  # fmt: skip
    json.dumps(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "1,x"], "error: seeds: '1,x' is not a comma-separated list of integers"),
        (["--seeds", ","], "error: seeds: give at least one seed"),
        (["--visits", "5"], "Invalid value for '--visits'"),
    ],
)
def test_bench_bandit_rejects_bad_options(args, message) -> None:
    from typer.testing import CliRunner

    from nextbest.cli import app

    result = CliRunner().invoke(app, ["bench", "bandit", *args])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.slow
def test_a_tiny_league_through_the_served_pipeline(tmp_path_factory) -> None:
    """300 visits on a small world, one seed: every policy is scored on the same treated
    visits, the oracle bounds them all, uniform random closes nothing by construction, and
    Nextbest's served probabilities are the ones its ledger logged."""
    from benchmarks.league import run_league
    from nextbest.settings import Settings

    settings = Settings(home=tmp_path_factory.mktemp("league_home"), customers=300, days=20)
    result = run_league(settings, 300, [3], retrain_every=10_000, window=150, checkpoints=3,
                        progress=False)  # fmt: skip
    table = result.policies
    assert result.nextbest == "nextbest_squarecb" and result.nextbest in table
    expected = {"uniform_random", "best_single", "propensity_value", "uplift_greedy",
                "epsilon_greedy", "linucb", "lin_thompson", "oracle", *VW_EXPLORERS}  # fmt: skip
    assert expected <= set(table)
    assert table["uniform_random"].gap_closed == [pytest.approx(0.0, abs=1e-9)]
    assert table["oracle"].gap_closed == [pytest.approx(1.0)]
    oracle = table["oracle"].per_visit[0]
    assert all(s.per_visit[0] <= oracle + 1e-12 for s in table.values())
    assert result.curve_visits == [100, 200, 300] and result.plot
    assert result.logged_matches_policy == [1.0]
    shape = json.loads(json.dumps(result.model_dump()))
    assert set(shape["policies"]["linucb"]) == {"gap_closed", "mean", "per_visit"}
