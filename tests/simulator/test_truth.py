"""The truth API agrees with the history it generated, and behaves as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offers.catalog import load_catalog
from simulator.clock import US_PER_DAY, to_us
from simulator.truth import Truth
from simulator.world import World, write_world

OFFERS = load_catalog().ids


def _probs(truth: Truth, ex: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return truth.conversion_probs(
        ex.true_person_id, ex.ts, ex.channel, ex.offer_id, ex.open_basket.to_numpy()
    )


def test_exposure_probabilities_are_the_truths(truth: Truth, world: World) -> None:
    p1, p0 = _probs(truth, world.exposures)
    assert np.allclose(p1, world.exposures.true_p_treated, atol=1e-12)
    assert np.allclose(p0, world.exposures.true_p_untreated, atol=1e-12)


def test_empirical_conversion_matches_truth_in_each_arm(large_world: World) -> None:
    ex = large_world.exposures
    for arm, col in (("treatment", "true_p_treated"), ("holdout", "true_p_untreated")):
        part = ex[ex.arm == arm]
        p = part[col].to_numpy()
        se = np.sqrt((p * (1 - p)).sum()) / len(p)
        assert abs(part.converted.mean() - p.mean()) < 4 * se, arm
    # and along the probability scale: the top quartile converts at its predicted rate
    treated = ex[ex.arm == "treatment"]
    top = treated[treated.true_p_treated >= treated.true_p_treated.quantile(0.75)]
    p = top.true_p_treated.to_numpy()
    assert abs(top.converted.mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / len(p)
    assert top.converted.mean() > 2 * treated.converted.mean() / 1.5


def test_observed_churn_matches_the_integrated_hazard(
    large_world: World, large_truth: Truth
) -> None:
    people = large_world.people
    days = large_world.meta["days"]
    start = to_us(pd.Timestamp(large_world.meta["start"]))
    churned_day = (
        to_us(people.churned_at.fillna(pd.Timestamp("2100-01-01", tz="UTC"))) - start
    ) // US_PER_DAY
    ids = np.repeat(people.person_id.to_numpy(), days)
    day = np.tile(np.arange(days), len(people))
    at_risk = day <= np.repeat(churned_day, days)
    h = large_truth.churn_hazards(ids[at_risk], start + day[at_risk] * US_PER_DAY)
    expected, observed = h.sum(), people.churned_at.notna().sum()
    assert abs(observed - expected) < 4 * np.sqrt(expected), (observed, expected)


def test_churn_hazard_responds_to_disengagement_and_churn(truth: Truth, world: World) -> None:
    p = world.people
    gone = p[p.churned_at.notna()].iloc[0]
    assert truth.churn_hazard(gone.person_id, gone.churned_at + pd.Timedelta(hours=1)) == 0.0
    dis = p[p.disengaged_at.notna()].iloc[0]
    before = truth.churn_hazard(dis.person_id, dis.disengaged_at - pd.Timedelta(hours=1))
    after = truth.churn_hazard(dis.person_id, dis.disengaged_at + pd.Timedelta(hours=1))
    assert after > 5 * before > 0


def test_treatment_effects_vary_and_some_are_negative(truth: Truth, world: World) -> None:
    ids = world.people.person_id.to_numpy()
    at = pd.Timestamp(world.meta["start"]) + pd.Timedelta(days=10)
    for_offer = {}
    for offer in OFFERS[:-1]:
        for channel in ("email", "sms", "call_centre", "web"):
            up = truth.uplifts(ids, at, np.full(len(ids), channel), np.full(len(ids), offer))
            for_offer.setdefault(offer, []).append(up)
    allv = np.concatenate([np.concatenate(v) for v in for_offer.values()])
    possible = allv[allv != 0]
    assert (possible < 0).mean() > 0.03, "contact-averse people react badly"
    assert (possible > 0).mean() > 0.5
    # a discount to people who would buy anyway loses money even when uplift is positive
    r = truth.expected_rewards(
        ids, at, np.full(len(ids), "call_centre"), np.full(len(ids), "retention_discount")
    )
    up = truth.uplifts(
        ids, at, np.full(len(ids), "call_centre"), np.full(len(ids), "retention_discount")
    )
    assert ((r < 0) & (up > 0)).any()


def test_reward_is_incremental_margin(truth: Truth, world: World) -> None:
    cat = load_catalog()
    ids = np.repeat(world.people.person_id.to_numpy()[:50], len(OFFERS))
    offers = np.tile(np.asarray(OFFERS, dtype=object), 50)
    at = pd.Timestamp(world.meta["end"])
    p1, p0 = truth.conversion_probs(ids, at, np.full(len(ids), "app"), offers, True)
    value = np.array([cat.get(o).value for o in offers])
    cost = np.array([cat.get(o).cost for o in offers])
    r = truth.expected_rewards(ids, at, np.full(len(ids), "app"), offers, True)
    assert np.allclose(r, p1 * (value - cost) - p0 * value)
    assert (r[offers == "no_offer"] == 0).all() and (p1[offers == "no_offer"] == 0).all()


def test_scalar_calls_match_vectorised_ones(truth: Truth, world: World) -> None:
    pid = world.people.person_id.iat[3]
    at = pd.Timestamp(world.meta["end"]).to_pydatetime()
    ctx = {"channel": "web", "open_basket": True}
    p1, p0 = truth.conversion_probs([pid], at, ["web"], ["streaming_bundle"], [True])
    assert truth.conversion_prob(pid, at, "web", "streaming_bundle", True, ctx) == p1[0]
    assert truth.conversion_prob(pid, at, "web", "streaming_bundle", False, ctx) == p0[0]
    assert truth.uplift(pid, at, "web", "streaming_bundle", ctx) == pytest.approx(p1[0] - p0[0])
    assert isinstance(truth.expected_reward(pid, at, "web", "streaming_bundle", ctx), float)
    assert truth.churn_hazard(pid, at) == truth.churn_hazards([pid], at)[0]


def test_open_basket_raises_device_upgrade_propensity(truth: Truth, world: World) -> None:
    p = world.people
    ids = p.loc[p.plan != "prepaid", "person_id"].to_numpy()
    at = pd.Timestamp(world.meta["end"])
    args = (ids, at, np.full(len(ids), "web"), np.full(len(ids), "device_upgrade"))
    with_b, without = (
        truth.conversion_probs(*args, True)[1],
        truth.conversion_probs(*args, False)[1],
    )
    possible = without > 0
    assert possible.any() and (with_b[possible] > without[possible]).all()


def test_ineligible_offers_cannot_convert(truth: Truth, world: World) -> None:
    p = world.people
    postpaid = p.loc[p.plan != "prepaid", "person_id"].to_numpy()
    prepaid = p.loc[(p.plan == "prepaid") & p.churned_at.isna(), "person_id"].to_numpy()
    at = pd.Timestamp(world.meta["end"])
    p1, p0 = truth.conversion_probs(postpaid, at, "sms", "prepaid_to_postpaid")
    assert (p1 == 0).all() and (p0 == 0).all()
    p1, _ = truth.conversion_probs(prepaid, at, "sms", "prepaid_to_postpaid")
    assert (p1 > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"person_ids": ["P9999999"]}, KeyError, "unknown person_id 'P9999999'"),
        ({"offer_ids": ["free_phone"]}, ValueError, r"unknown offer_id 'free_phone' \(known: "),
        ({"channels": ["fax"]}, ValueError, r"unknown channel 'fax' \(known: web, app, "),
    ],
)
def test_bad_arguments_are_named(
    truth: Truth, world: World, kwargs: dict, error: type, match: str
) -> None:
    args = {
        "person_ids": [world.people.person_id.iat[0]],
        "at": pd.Timestamp(world.meta["end"]),
        "channels": ["web"],
        "offer_ids": ["data_addon"],
    }
    with pytest.raises(error, match=match):
        truth.conversion_probs(**{**args, **kwargs})


def test_visits_carry_what_each_channel_knows(truth: Truth, world: World) -> None:
    v = truth.sample_visits(np.random.default_rng(3), 4000)
    again = truth.sample_visits(np.random.default_rng(3), 4000)
    pd.testing.assert_frame_equal(v, again)
    assert set(v.channel) == {"web", "app", "email", "sms", "call_centre", "store"}
    assert v["at"].min() >= pd.Timestamp(world.meta["end"])
    churned = set(world.people.loc[world.people.churned_at.notna(), "person_id"])
    assert not churned & set(v.person_id)
    by = v.groupby("channel")
    assert by.get_group("web").cookie_id.notna().all()
    assert by.get_group("app").login_id.notna().all()
    assert by.get_group("email").email.notna().all()
    assert by.get_group("sms").phone.notna().all()
    assert not v[v.channel.isin(["email", "sms", "call_centre", "store"])].open_basket.any()
    assert 0.05 < v[v.channel.isin(["web", "app"])].open_basket.mean() < 0.15
    one = truth.sample_visit(np.random.default_rng(1))
    assert one.context["channel"] == one.channel and "open_basket" in one.context


def test_sampled_outcomes_follow_the_probabilities(truth: Truth) -> None:
    rng = np.random.default_rng(5)
    v = truth.sample_visits(rng, 20000)
    offers = np.full(len(v), "loyalty_reward")
    y = truth.sample_outcomes(rng, v, offers, treated=True)
    p1, _ = truth.conversion_probs(v.person_id, v["at"], v.channel, offers, v.open_basket)
    assert abs(y.mean() - p1.mean()) < 4 * np.sqrt((p1 * (1 - p1)).sum()) / len(p1)
    pid = v.person_id.iat[0]
    draws = [
        truth.sample_outcome(rng, pid, "no_offer", True, v["at"].iat[0], "web") for _ in range(20)
    ]
    assert not any(draws)


def test_load_from_disk_gives_the_same_truth(truth: Truth, world: World, tmp_path: Path) -> None:
    write_world(world, tmp_path)
    loaded = Truth.load(tmp_path)
    v = truth.sample_visits(np.random.default_rng(0), 300)
    assert np.array_equal(truth.reward_matrix(v), loaded.reward_matrix(v))
    assert np.array_equal(
        truth.churn_hazards(v.person_id, v["at"]), loaded.churn_hazards(v.person_id, v["at"])
    )
    with pytest.raises(FileNotFoundError, match="holds no simulated world"):
        Truth.load(tmp_path / "nothing")


def test_simulator_modules_import_one_way() -> None:
    """No two simulator modules import each other (truth.py mixes in visits.py's live
    sampling; visits.py must not import truth.py back, not even for type hints)."""
    import grimp

    graph = grimp.build_graph("simulator", cache_dir=None)
    both_ways = sorted(
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if a < b and a in graph.find_modules_directly_imported_by(b)
    )
    assert both_ways == []
