"""The VW bandit: one formatter, the allowed set, learning on a known world, the ledger loop."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest

from training.bandit import BanditPolicy, action_line, format_example
from training.bandit_ledger import (
    ledger_examples,
    logged_examples,
    target_probabilities,
    train_bandit,
)
from training.bandit_registry import BanditError, load_bandit, load_registered, promoted_version

ACTIONS = {
    "disc": {"category": "discount", "cost": 2.0},
    "data": {"category": "data", "cost": 1.0},
    "tv": {"category": "tv", "cost": 3.0},
    "none": {"category": "none", "cost": 0.0},
}


def test_one_formatter_for_predict_and_learn() -> None:
    feats = {"plan": "postpaid m", "arpu": 31.5, "months_left": None, "app": True, "n": 0}
    actions = [(o, action_line(o, ACTIONS[o])) for o in ("disc", "none")]
    ctx = {"page": "home|x", "basket": ["a", "b"], "intent": None}
    predict = format_example(feats, "web", ctx, actions)
    assert predict == [
        # numbers as they are (a zero is VW's absent feature), text as indicators
        "shared |u plan=postpaid_m arpu:31.5 app:1 |c channel=web page=home_x basket=a basket=b",
        "|a offer=disc category=discount |v cost:2",  # numbers outside the -q interactions
        "|a offer=none category=none",
    ]
    learn = format_example(feats, "web", ctx, actions, label=(1, -0.5, 0.25))
    assert learn[0] == predict[0] and learn[1] == predict[1]
    assert learn[2] == "0:-0.5:0.25 " + predict[2]


def test_model_scores_are_an_action_feature_and_identifiers_are_not() -> None:
    """Arbitration's expected incremental value rides on each offer's line (namespace ``s``,
    outside the interactions); the customer id is left out (one weight per customer and offer
    would memorise noise)."""
    actions = [(o, action_line(o, ACTIONS[o])) for o in ("disc", "none")]
    lines = format_example(
        {"customer_id": "C1", "arpu": 3.0}, "web", {}, actions, scores={"disc": 0.25, "none": 0.0}
    )
    assert lines[0] == "shared |u arpu:3 |c channel=web"
    assert lines[1] == "|a offer=disc category=discount |v cost:2 |s uplift:0.25"
    assert lines[2] == "|a offer=none category=none"  # a zero score is no feature
    policy = BanditPolicy(ACTIONS, reward_scale=4.0)
    assert policy._scaled({"disc": 2.0}) == {"disc": 0.5}  # scores in the units of the costs


def test_the_converting_margin_rides_beside_the_uplift_score() -> None:
    """``pm`` = P(convert | shown) x (value - cost), in reward units, in namespace ``s`` next
    to the uplift score: the bandit can learn to trust either (the bandit league)."""
    actions = [(o, action_line(o, ACTIONS[o])) for o in ("disc", "none")]
    lines = format_example({"arpu": 3.0}, "web", {}, actions, scores={"disc": 0.25},
                           priors={"disc": 0.5, "none": 0.0})  # fmt: skip
    assert lines[1] == "|a offer=disc category=discount |v cost:2 |s uplift:0.25 pm:0.5"
    assert lines[2] == "|a offer=none category=none"
    assert format_example({}, "web", {}, actions, priors={"disc": 0.5})[1].endswith("|s pm:0.5")
    policy = BanditPolicy({"a": {"value": 10.0, "cost": 2.0}, "b": {"value": 5}}, reward_scale=4.0)
    assert policy._priors({"a": 0.5, "b": 0.2}) == {"a": 1.0, "b": 0.25}
    assert policy._priors(None) is None


def test_the_bandit_starts_from_the_model_scores() -> None:
    """Where the scores rank offers right, the bandit follows them after a few hundred visits
    even though its customer features say nothing: one weight learns to trust the model
    (measured at the learning rate 0.05: its favourite is the best offer 0.54 of the time,
    0.51-0.64 over seeds 3-5; without the scores 0.20-0.28, a quarter being chance)."""
    rng, ids = np.random.default_rng(3), list(ACTIONS)
    policy = BanditPolicy(ACTIONS, reward_scale=3.0, exploration="squarecb", seed=4)
    hits = []
    for t in range(600):
        mu = rng.normal(0, 2, len(ids))
        scores = dict(zip(ids, mu.tolist(), strict=True))
        offer, probs = policy.choose({"x": 1.0}, "web", {}, ids, scores)
        policy.learn({"x": 1.0}, "web", {}, ids, offer, probs[offer],
                     mu[ids.index(offer)] + rng.normal(0, 1), scores)  # fmt: skip
        if t >= 400:
            hits.append(max(probs, key=probs.get) == ids[int(np.argmax(mu))])
    assert np.mean(hits) > 0.45, np.mean(hits)


def test_choose_stays_in_the_allowed_set_and_returns_its_distribution() -> None:
    policy = BanditPolicy(ACTIONS, seed=1)
    offer, probs = policy.choose({"x": 1.0}, "app", {}, ["tv", "none"])
    assert offer in ("tv", "none") and set(probs) == {"tv", "none"}
    assert sum(probs.values()) == pytest.approx(1.0)
    assert policy.choose({"x": 1.0}, "app", {}, []) == (None, {})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"offer_id": "tv"}, r"offer_id: 'tv' is not among the allowed offers"),
        ({"probability": 0.0}, r"probability must be in \(0, 1\], got 0.0"),
        ({"probability": 1.5}, r"probability must be in \(0, 1\], got 1.5"),
        ({"reward": float("nan")}, r"reward must be finite, got nan"),
        (
            {"allowed": ["disc", "gold"], "offer_id": "disc"},
            r"offers not in the catalogue: \['gold'\]",
        ),
    ],
)
def test_learn_rejects_bad_input(kwargs, message) -> None:
    args = {
        "features": {},
        "channel": "web",
        "context": {},
        "allowed": ["disc", "none"],
        "offer_id": "disc",
        "probability": 0.5,
        "reward": 1.0,
    }
    with pytest.raises(ValueError, match=message):
        BanditPolicy(ACTIONS).learn(**{**args, **kwargs})
    with pytest.raises(ValueError, match="reward_scale must be > 0"):
        BanditPolicy(ACTIONS, reward_scale=0)


def _truth(x: dict) -> np.ndarray:
    """Expected reward per action: each offer suits a different kind of customer."""
    ps, dh, sa = x["price_sensitivity"], x["data_hunger"], x["streaming"]
    return np.array([6 * ps - 2, 3 * dh - 1, 6 * sa - 3, 0.0])


def _visit(rng: np.random.Generator) -> dict:
    return {
        "price_sensitivity": rng.random(),
        "data_hunger": rng.random(),
        "streaming": rng.random(),
    }


def test_learns_who_wants_what_on_a_known_world() -> None:
    """8,000 noisy rewards (measured: gap closed 0.70; 0.53 after 4,000 at the learning rate
    0.05, which averages the simulator's rare, large rewards better than it learns this
    clean world fast)."""
    rng, ids = np.random.default_rng(0), list(ACTIONS)
    policy = BanditPolicy(ACTIONS, reward_scale=3.0, seed=2)
    for _ in range(8000):
        x = _visit(rng)
        offer, probs = policy.choose(x, "web", {}, ids)
        reward = _truth(x)[ids.index(offer)] + rng.normal(0, 2)
        policy.learn(x, "web", {}, ids, offer, probs[offer], reward)
    test = [_visit(rng) for _ in range(500)]
    mu = np.array([_truth(x) for x in test])
    dist = np.array([list(policy.distribution(x, "web", {}, ids).values()) for x in test])
    learned, uniform, oracle = (dist * mu).sum(1).mean(), mu.mean(), mu.max(1).mean()
    best_single = mu.mean(0).max()
    gap = (learned - uniform) / (oracle - uniform)
    assert gap > 0.6 and learned > best_single + 0.2, (learned, uniform, best_single, oracle)


def _ledger_rows(settings, n: int, rng: np.random.Generator, t0=None):
    """Decisions logged by a uniform policy on the real catalogue, and their outcomes, one a
    second from ``t0`` (now by default)."""
    from nextbest.db import engine_for
    from offers.catalog import load_catalog
    from record.ledger import Ledger
    from record.tables import DecisionRow, OutcomeRow, now

    catalog = {o.id: o for o in load_catalog().offers}
    allowed = ["device_upgrade", "data_addon", "streaming_bundle", "no_offer"]
    ledger, t0 = Ledger(engine_for(settings.ledger_db_url)), t0 or now()
    for i in range(n):
        feats = {"arpu": float(rng.uniform(10, 60)), "plan": str(rng.choice(["s", "m"]))}
        offer = str(rng.choice(allowed))
        did = uuid.uuid4().hex
        ledger.record_decision(
            DecisionRow(
                decision_id=did,
                ts=t0 + timedelta(seconds=i),
                customer_id=f"c{i}",
                channel="web",
                context={"page": "home"},
                experiment="nbo",
                arm="treatment",
                offer_id=offer,
                propensity=0.25,
                probabilities=dict.fromkeys(allowed, 0.25),
                scores={"features": feats},
                model_versions={},
            )
        )
        wants = "data_addon" if feats["plan"] == "s" else "device_upgrade"
        if offer == wants and rng.random() < 0.6:
            value = catalog[offer].value
            for _ in range(2):  # a retried report counts once
                ledger.record_outcome(
                    OutcomeRow(idempotency_key=f"k{did}", decision_id=did, type="conversion",
                               value=value, ts=t0 + timedelta(seconds=i, days=1))
                )  # fmt: skip
    return ledger


def test_rewards_from_the_ledger_use_the_window_and_the_cost() -> None:
    import pandas as pd

    t = pd.Timestamp("2026-01-01", tz="UTC")
    day = pd.Timedelta(days=1)
    logs = pd.DataFrame(
        {
            "decision_id": ["a", "b", "c", "d", "e"],
            "customer_id": ["p", "q", "p", "r", "s"],
            "ts": [t, t, t, t, t + 40 * day],
            "channel": ["web"] * 5,
            "context": [{}] * 5,
            "arm": ["treatment", "treatment", "holdout", "treatment", "treatment"],
            "offer_id": ["x"] * 5,
            "propensity": [0.5, 0.5, None, 0.5, 0.5],
            "probabilities": [{"x": 0.5, "y": 0.5}] * 5,
            "scores": [{"features": {"f": 1.0}, "value": {"x": 2.0}}]
            + [{"features": {"f": 1.0}}] * 2
            + [{}, {"features": {}}],
        }
    )
    outcomes = pd.DataFrame(
        {
            "decision_id": ["a", "a", "b", None, "b", None],
            "customer_id": ["p", "p", "q", "p", "q", "s"],
            "type": ["conversion", "click", "conversion", "revenue", "revenue", "revenue"],
            "value": [100.0, 1.0, 100.0, 20.0, 15.0, 50.0],
            "ts": [t + 2 * day, t, t + 31 * day, t + 3 * day, t + 5 * day, t + 39 * day],
        }
    )
    ex = logged_examples(logs, outcomes, {"x": 30.0}, attribution_days=30)
    assert ex["decision_id"].tolist() == ["a", "b", "e"]  # holdout and no snapshot left out
    # a: its conversion minus the cost, plus the customer's other spending in the window;
    # b: converted after the window (no cost), other spending 15; e: p's spending came before
    assert ex["reward"].tolist() == [90.0, 15.0, 0.0]
    assert ex["allowed"].tolist() == [["x", "y"]] * 3
    assert ex["scores"].tolist() == [{"x": 2.0}, None, None]  # the scores the decision saw
    # the conversion reward counts the offer's own conversion only: no other spending
    only = logged_examples(logs, outcomes, {"x": 30.0}, 30, reward="conversion")
    assert only["reward"].tolist() == [70.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"^reward: 'margin' is not one of spend, conversion$"):
        logged_examples(logs, outcomes, {"x": 30.0}, 30, reward="margin")  # type: ignore[arg-type]


def test_train_from_ledger_register_promote_and_load(nextbest_home) -> None:
    from nextbest.settings import get_settings

    settings = get_settings()
    with pytest.raises(BanditError, match=r"ledger: 0 learnable decisions"):
        train_bandit(settings, promote=True)
    _ledger_rows(settings, 600, np.random.default_rng(5))
    first = train_bandit(settings, promote=True)
    assert first["promoted"] and first["examples"] == 600 and first["evaluated_on"] == 120
    assert first["ope"]["challenger"]["value"] > first["ope"]["logging"]["value"]
    champion = load_bandit(settings)
    assert champion is not None and champion.version == f"bandit:{first['version']}"
    # a running service adopts it and learns online after the last decision it was trained on
    last = ledger_examples(settings)["ts"].max().to_pydatetime()
    assert (promoted_version(settings), champion.trained_through) == (champion.version, last)
    low = {"arpu": 15.0, "plan": "s"}
    allowed = ["device_upgrade", "data_addon", "streaming_bundle", "no_offer"]
    probs = champion.distribution(low, "web", {"page": "home"}, allowed)
    assert max(probs, key=probs.get) == "data_addon"
    probs = champion.distribution({"arpu": 15.0, "plan": "m"}, "web", {"page": "home"}, allowed)
    assert max(probs, key=probs.get) == "device_upgrade"
    second = train_bandit(settings, promote=False)
    # the champion learned every one of these logs: judged on them it would look better
    assert not second["promoted"] and second["gate"].endswith("not judged")
    assert load_registered(settings, "challenger").version == f"bandit:{second['version']}"
    assert load_bandit(settings).version == champion.version  # serving still has the champion


def test_a_point_win_within_the_noise_is_not_promoted(tmp_path) -> None:
    """The challenger's SNIPS point value beats the champion's (uniform choice) on the 30
    recent decisions, but the lower bound of its paired advantage is below zero: no
    promotion (``>=`` on the point values promoted it)."""
    from experiments.ope import FixedPolicy
    from nextbest.settings import Settings

    settings = Settings(home=tmp_path)
    _ledger_rows(settings, 150, np.random.default_rng(0))
    out = train_bandit(settings, promote=True, champion=FixedPolicy())
    ope = out["ope"]
    assert ope["challenger"]["value"] > ope["champion"]["value"]  # a point win...
    adv = ope["advantage"]
    assert adv["value"] == pytest.approx(ope["challenger"]["value"] - ope["champion"]["value"])
    assert adv["ci_low"] < 0 < adv["value"]  # ...within the noise
    assert not out["beats_champion"] and not out["promoted"]
    assert out["gate"].endswith("does not beat the champion by more than the margin 0")
    assert load_bandit(settings) is None  # nothing reached the model store


def test_a_retrain_learns_an_offer_new_to_the_champion(tmp_path) -> None:
    """The champion was trained before streaming_bundle joined the catalogue: the retrain
    judges it on logs where streaming_bundle was allowed (it raised), learns those decisions,
    and keeps streaming_bundle in cold start, counting the times it learned it, until it has
    learned it ``bandit_cold_start_examples`` times (the count survives the registry)."""
    from nextbest.settings import Settings
    from training.bandit_ledger import catalog_actions

    settings = Settings(home=tmp_path)
    _ledger_rows(settings, 150, np.random.default_rng(1))
    actions, _ = catalog_actions(settings)
    champion = BanditPolicy({k: v for k, v in actions.items() if k != "streaming_bundle"})
    out = train_bandit(settings, promote=False, champion=champion)
    assert "advantage" in out["ope"] and not out["promoted"]
    shown = int((ledger_examples(settings)["offer_id"] == "streaming_bundle").sum())
    challenger = load_registered(settings, "challenger")
    assert challenger.cold == {"streaming_bundle": shown} and 0 < shown < 100
    assert challenger.cold_start(["data_addon", "streaming_bundle"]) == {"streaming_bundle": shown}
    # learned often enough, it leaves cold start in the next retrain
    again = train_bandit(
        settings.model_copy(update={"bandit_cold_start_examples": shown}),
        promote=False,
        champion=challenger,
    )
    assert again["version"] != out["version"]
    assert load_registered(settings, "challenger").cold == {}


def test_promote_bandit_by_hand_applies_the_training_gate(tmp_path) -> None:
    """``nextbest promote bandit`` / ``POST /promote/bandit`` (refused before: 'not one of
    churn, propensity') hold a challenger to the gate of ``train bandit --promote``: the
    first bandit, with no champion, is promoted; a retrain on the logs the champion learned
    cannot be judged; once decisions neither model learned are logged it is judged on them,
    and a tie (the same logs, the same seed: the same model, which ``>=`` promoted) loses."""
    from estimation.ope import snips_advantage
    from nextbest.settings import Settings
    from training.promotion import promote

    settings = Settings(home=tmp_path)
    _ledger_rows(settings, 300, np.random.default_rng(5))
    first = train_bandit(settings, promote=False)
    by_hand = promote(settings, "bandit")
    assert by_hand.promoted and by_hand.reason == "no champion to beat"
    assert by_hand.champion_version == first["version"] and by_hand.bentoml_tag
    again = train_bandit(settings, promote=False)  # the same logs: nothing the champion lacks
    assert not again["promoted"] and "advantage" not in again["ope"]
    assert again["gate"].startswith("only 0 of the 60 recent decisions are newer than")
    held = promote(settings, "bandit")
    assert not held.promoted and held.reason == f"{again['gate']} (at training)"
    last = ledger_examples(settings)["ts"].max()
    _ledger_rows(settings, 80, np.random.default_rng(6), t0=last + timedelta(minutes=1))
    fresh = promote(settings, "bandit")
    assert fresh.reason.endswith("(on 80 decisions logged since it was trained)")
    new = ledger_examples(settings).iloc[-80:]
    r, p = new["reward"].to_numpy(), new["propensity"].to_numpy()
    target = target_probabilities(load_registered(settings, "challenger"), new)
    old = target_probabilities(load_registered(settings, "champion"), new)
    tie = snips_advantage(r, p, target, old)
    assert tie.value == 0.0 and not fresh.promoted  # a tie is no win
    assert fresh.challenger_score == tie.ci_low and fresh.champion_score == 0.0
    assert promoted_version(settings) == f"bandit:{first['version']}"


@pytest.mark.parametrize(
    ("low", "margin", "wins", "says"),
    [
        (None, 0.0, True, "no champion to beat"),
        (0.5, 0.0, True, ": beats the champion by more than the margin 0"),
        (-0.5, 0.0, False, ": does not beat the champion by more than the margin 0"),
        (0.5, 1.0, False, ": does not beat the champion by more than the margin 1"),
        (0.0, 0.0, False, ": does not beat"),  # a bound at the margin is no win
    ],
)
def test_the_gate_is_the_advantage_lower_bound(low, margin, wins, says) -> None:
    from estimation.ope import Estimate
    from training.bandit_ledger import beats

    adv = None
    if low is not None:
        adv = Estimate(estimator="snips_advantage", value=1.0, ci_low=low, ci_high=2.0, n=40)
    won, why = beats(adv, margin)
    assert won is wins
    assert says in why


def test_a_model_of_another_example_format_is_refused(tmp_path) -> None:
    import json

    from training.bandit_registry import FORMAT_VERSION, _from_folder

    BanditPolicy(ACTIONS).save(tmp_path / "model.vw")
    meta = {"actions": ACTIONS, "exploration": "epsilon", "reward_scale": 1.0, "format": 1}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        BanditError, match=f"bandit:3: written with example format 1, .* {FORMAT_VERSION}"
    ):
        _from_folder(tmp_path, "bandit:3", seed=1)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "format": FORMAT_VERSION}))
    assert _from_folder(tmp_path, "bandit:3", seed=1).version == "bandit:3"
