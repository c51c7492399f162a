"""Journeys on a simulated world: the holdout converts at the world's rate, the treated minus
holdout difference converges to the truth, the dialog obeys consent, quiet hours and exits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from journeys.definition import Journey
from simulator.clock import START_US, US_PER_DAY, to_us
from simulator.dialog import (
    CLICK_DELAY_US,
    OPEN_DELAY_US,
    PROMPT_DELAY_DAYS,
    goal_shift,
    logit,
    sigmoid,
    stage_probs,
)
from simulator.goals import Unsupported, WorldView, baseline
from simulator.journey_entrants import world_entries
from simulator.journey_sim import simulate_journeys
from simulator.world import World
from tests.simulator.journey_defs import WINBACK, shipped


def _journey(name: str) -> Journey:
    return next(j for j in shipped() if j.name == name)


@pytest.fixture(scope="module")
def basket_run(large_world: World) -> Any:
    return simulate_journeys(large_world, [_journey("abandoned_basket")], seed=3, holdout_share=0.5)


def test_basket_holdout_comes_back_at_the_worlds_21_percent(basket_run: Any) -> None:
    s = basket_run.summary["abandoned_basket"]
    assert 0.19 < s["untreated_rate_true"] < 0.23
    n = s["n_holdout"]
    assert n > 1000
    half = 1.96 * np.sqrt(0.21 * 0.79 / n)
    assert abs(s["holdout_rate"] - 0.21) < half + 0.02, s
    assert 0.03 < s["true_lift"] < 0.07  # the dialog adds 3-7 points


def test_holdout_is_sticky_per_customer(basket_run: Any) -> None:
    arms = basket_run.units.groupby("customer_id")["arm"].nunique()
    assert (arms == 1).all()
    assert basket_run.units.customer_id.duplicated().any()  # some came back more than once


def _repeated(world: World, journey: Journey, times: int) -> pd.DataFrame:
    e = world_entries(WorldView.of(world), journey, START_US, START_US + 60 * US_PER_DAY)
    return pd.concat([e] * times, ignore_index=True)


def _cluster_se(units: pd.DataFrame) -> float:
    """Standard error of treated minus holdout rates with customers as clusters (the holdout
    is drawn per customer, and customers enter many times)."""
    var = 0.0
    for arm in ("treatment", "holdout"):
        u = units[units.arm == arm]
        resid = (u.converted - u.converted.mean()).groupby(u.customer_id).sum()
        var += float((resid**2).sum()) / len(u) ** 2
    return float(np.sqrt(var))


@pytest.mark.parametrize("name", ["abandoned_basket", "winback"])
def test_measured_difference_converges_to_the_truth(large_world: World, name: str) -> None:
    """A huge seeded run (customers entering many times over): treated minus holdout lands
    within its sampling error of the truth."""
    j = _journey(name)
    if name == "abandoned_basket":
        entries = _repeated(large_world, j, 12)
    else:  # everyone enters the win-back path experiment, six times
        everyone = np.arange(len(large_world.people))
        t0 = START_US + 10 * US_PER_DAY + np.arange(6)[:, None] * 30 * US_PER_DAY
        entries = pd.DataFrame(
            {"person": np.tile(everyone, 6), "entered_at": (t0 + 0 * everyone).ravel()}
        ).assign(product_id=None)
    run = simulate_journeys(large_world, [j], seed=11, holdout_share=0.5, entries={name: entries})
    u = run.units
    t, h = u[u.arm == "treatment"].converted, u[u.arm == "holdout"].converted
    assert min(len(t), len(h)) > 6000
    diff = t.mean() - h.mean()
    se = _cluster_se(u)
    truth = run.truth[name]
    assert abs(diff - truth) < 3 * se + 3 * run.truth_se[name], (diff, truth, se)
    assert truth > se  # and the truth is not zero: the test can tell
    if name == "winback":  # both paths of the path experiment ran
        split = next(s for s in j.steps if s.type == "random_split")
        assert set(u.loc[u.arm == "treatment", "path"]) == {b.name for b in split.branches}
        assert u.loc[u.arm == "holdout", "path"].isna().all()


def _one_email(trigger: str = "intent") -> Journey:
    entry = (
        {"type": "intent", "event": "basket_add"}
        if trigger == "intent"
        else {"type": "calendar", "date": "01-11"}
    )
    return Journey.model_validate(
        {
            "name": "one_email",
            "offers": ["data_addon"],
            "entry": entry,
            "goal": {"event": "purchase", "product": "any", "within": "30d"},
            "steps": [{"id": "mail", "type": "message", "channel": "email", "next": None}],
        }
    )


def _hypo_cdf(x: float, a: float, b: float) -> float:
    """P(Exp(rate a) + Exp(rate b) <= x)."""
    return 1 - (b * np.exp(-a * x) - a * np.exp(-b * x)) / (b - a)


def test_truth_exact_agrees_with_monte_carlo(world: World) -> None:
    """A one-e-mail journey's p_treated enumerated exactly over its path tree (consent,
    delivered, opened, clicked; open and prompt delays, cancellation before the contact)
    against the simulator's Monte Carlo truth."""
    j = _one_email()
    view = WorldView.of(world)
    t0 = START_US + 10 * US_PER_DAY
    person = np.arange(len(world.people))
    alive = (view.col("churned_at", person) < 0) | (view.col("churned_at", person) > t0)
    person = person[alive]
    n = len(person)
    entries = pd.DataFrame({"person": person, "entered_at": t0, "product_id": None})
    run = simulate_journeys(world, [j], seed=5, holdout_share=0.0, entries={j.name: entries})

    t0s = np.full(n, t0)
    p0 = baseline(view, j, person, t0s, np.full(n, None)).p
    consent = view.consent("email", person, t0s)
    tech, averse = view.col("tech_affinity", person), view.col("contact_aversion", person)
    probs = stage_probs("email", tech, averse, view.col("has_app", person))
    w = 30 * US_PER_DAY
    m = OPEN_DELAY_US["email"]
    p1 = p0.copy()
    for s in (1, 2, 3):
        shift = goal_shift("email", np.full(n, s), "intent", averse, np.zeros(n))
        p_new = sigmoid(logit(p0) + shift)
        d = PROMPT_DELAY_DAYS[s] * US_PER_DAY
        if s == 1:
            in_time, effect_mean = 1 - np.exp(-w / d), 0.0
        elif s == 2:
            in_time, effect_mean = _hypo_cdf(w, 1 / m, 1 / d), m * (1 - np.exp(-w / m))
        else:
            in_time = _hypo_cdf(w - CLICK_DELAY_US, 1 / m, 1 / d)
            effect_mean = m + CLICK_DELAY_US
        gain = (p_new - p0) * in_time  # newly over the line, in time
        lost = (p0 - p_new) * (1 - effect_mean / w)  # pending conversions put off
        p1 += consent * probs[:, s] * np.where(p_new >= p0, gain, -lost)
    exact = float((p1 - p0).mean())
    mc, se = run.truth[j.name], run.truth_se[j.name]
    assert se < 0.0005
    assert abs(mc - exact) < 4 * se + 1e-4, (mc, exact, se)


def test_deterministic_for_a_seed(world: World) -> None:
    js = [_journey("abandoned_basket"), Journey.model_validate(WINBACK)]
    a = simulate_journeys(world, js, seed=4)
    b = simulate_journeys(world, js, seed=4)
    c = simulate_journeys(world, js, seed=5)
    pd.testing.assert_frame_equal(a.units, b.units)
    pd.testing.assert_frame_equal(a.steps, b.steps)
    assert a.truth == b.truth
    assert not a.units.arm.equals(c.units.arm) or not a.steps.equals(c.steps)


def _local_minutes(ts: pd.Series) -> np.ndarray:
    local = pd.DatetimeIndex(ts).tz_convert("Europe/London")
    return np.asarray(local.hour * 60 + local.minute)


def test_consent_quiet_hours_and_exits_are_obeyed(basket_run: Any, large_world: World) -> None:
    steps, units = basket_run.steps, basket_run.units
    view = WorldView.of(large_world)
    person = view.index.get_indexer(
        units.set_index("instance_id").loc[steps.instance_id, "customer_id"]
    )
    at = np.asarray(to_us(steps["sent_at"]), dtype=np.int64)
    for ch in ("email", "sms"):
        m = (steps.channel == ch).to_numpy()
        ok = view.consent(ch, person[m], at[m])
        assert (steps.sent[m].to_numpy() == ok).all(), ch  # sent exactly when consented
        assert (~ok).any() and ok.any()
    assert not steps[~steps.sent].delivered.any()
    # quiet hours: no e-mail 21:00-08:00, no SMS 20:00-09:00 (London), some held to their end
    email = _local_minutes(steps.loc[steps.channel == "email", "sent_at"])
    sms = _local_minutes(steps.loc[steps.channel == "sms", "sent_at"])
    assert ((email >= 8 * 60) & (email < 21 * 60)).all()
    assert ((sms >= 9 * 60) & (sms < 20 * 60)).all()
    assert (email == 8 * 60).any() and (sms == 9 * 60).any()
    # exits: nothing is sent once the customer bought (the goal ends the basket's dialog)
    goal = units.set_index("instance_id").loc[steps.instance_id, "goal_at"].to_numpy()
    bought_before = pd.notna(goal) & (steps.sent_at.to_numpy() >= goal)
    assert not bought_before.any()
    assert units.loc[units.arm == "holdout"].instance_id.isin(steps.instance_id).sum() == 0
    # the wait_for: an e-mail opened is followed by an SMS far less often than one not opened
    mail = steps[(steps.step_id == "email") & steps.delivered]
    sms_sent = steps[steps.step_id == "sms"].instance_id
    opened = mail[mail.opened].instance_id.isin(sms_sent).mean()
    unopened = mail[~mail.opened].instance_id.isin(sms_sent).mean()
    assert opened < 0.1 < unopened, (opened, unopened)


def test_exit_event_interrupts_a_wait(world: World) -> None:
    """An exit on any purchase during a long wait: the second message never goes out to
    someone who bought anything in between, so fewer get it than without the exit."""
    base = {
        "name": "two_mails",
        "offers": ["data_addon"],
        "entry": {"type": "calendar", "date": "01-11"},
        "goal": {"event": "contract_renewal", "within": "60d"},
        "rules": {"holdout_share": 0.0},
        "steps": [
            {"id": "a", "type": "message", "channel": "email", "next": "w"},
            {"id": "w", "type": "wait", "duration": "20d", "next": "b"},
            {"id": "b", "type": "message", "channel": "email", "next": None},
        ],
    }
    plain = Journey.model_validate(base)
    exiting = Journey.model_validate({**base, "exit": [{"event": "purchase"}]})
    entries = _repeated(world, plain, 5)
    got = {}
    for j in (plain, exiting):
        run = simulate_journeys(world, [j], seed=2, entries={j.name: entries})
        got[j.exit != []] = (run.steps.step_id == "b").sum()
    assert got[True] < 0.9 * got[False]


def test_aversive_customers_lose_from_more_contact(world: World) -> None:
    """For the most contact-averse, a calendar nudge lowers the goal, and two contacts lower
    it more than one; for the rest it raises it."""
    two = {
        "name": "two",
        "offers": ["data_addon"],
        "entry": {"type": "calendar", "date": "01-11"},
        "goal": {"event": "purchase", "product": "any", "within": "30d"},
        "steps": [
            {"id": "a", "type": "message", "channel": "email", "next": "w"},
            {"id": "w", "type": "wait", "duration": "2d", "next": "b"},
            {"id": "b", "type": "message", "channel": "email", "next": None},
        ],
    }
    one = {**two, "name": "one", "steps": [{**two["steps"][0], "next": None}]}
    view = WorldView.of(world)
    person = np.arange(len(world.people))
    averse = view.col("contact_aversion", person) > 0.75
    lifts = {}
    for tag, mask in (("averse", averse), ("calm", ~averse)):
        e = pd.DataFrame(
            {"person": np.tile(person[mask], 20), "entered_at": START_US + 10 * US_PER_DAY}
        ).assign(product_id=None)
        for d in (one, two):
            j = Journey.model_validate(d)
            run = simulate_journeys(world, [j], seed=1, entries={j.name: e})
            lifts[tag, j.name] = run.truth[j.name]
            assert run.truth_se[j.name] < 0.0005
    assert lifts["averse", "two"] < lifts["averse", "one"] < 0, lifts
    assert lifts["calm", "two"] > lifts["calm", "one"] > 0, lifts


BAD = [
    ({"goal": {"event": "session_start"}}, "goal.event: 'session_start' has no untreated model"),
    (
        {"steps": [{"id": "w", "type": "wait_for", "event": "basket_add", "timeout": "1d",
                    "on_event": "x", "on_timeout": "x"}, {"id": "x", "type": "exit"}]},
        "journey bad: steps[0] (w).event: cannot simulate waiting for 'basket_add'",
    ),
    (
        {"steps": [{"id": "s", "type": "split", "otherwise": "x", "branches": [
            {"when": [{"field": "usage_trend", "op": "<", "value": 0}], "next": "x"}]},
                   {"id": "x", "type": "exit"}]},
        "profile field 'usage_trend': not simulated",
    ),
    ({"exit": [{"event": "email_open"}]}, "journey bad: exit[0].event: 'email_open' has no rate"),
]  # fmt: skip


@pytest.mark.parametrize("change,message", BAD)
def test_what_cannot_be_simulated_is_refused(world: World, change: dict, message: str) -> None:
    d = {
        "name": "bad",
        "offers": ["data_addon"],
        "entry": {"type": "calendar", "date": "01-11"},
        "goal": {"event": "purchase", "within": "30d"},
        "steps": [{"id": "m", "type": "message", "channel": "email", "next": None}],
    } | change
    with pytest.raises(Unsupported) as err:
        simulate_journeys(world, [Journey.model_validate(d)], seed=1)
    assert str(err.value).startswith(message), str(err.value)
