"""Past campaigns: randomised holdout, sends only to the treated, conversions in the events."""

from __future__ import annotations

import numpy as np
import pandas as pd

from offers.catalog import load_catalog
from simulator.campaigns import CAMPAIGN_CHANNELS, HOLDOUT_SHARE, plan_campaigns
from simulator.world import World


def test_campaigns_cover_several_channels_with_a_random_holdout(large_world: World) -> None:
    ex = large_world.exposures
    assert set(ex.channel) == set(CAMPAIGN_CHANNELS)
    assert set(ex.offer_id) == {o.id for o in load_catalog().offers if o.product_id}
    share = (ex.arm == "holdout").mean()
    se = np.sqrt(HOLDOUT_SHARE * (1 - HOLDOUT_SHARE) / len(ex))
    assert abs(share - HOLDOUT_SHARE) < 4 * se
    # randomised: the arms do not differ in who they hold
    traits = large_world.people.set_index("person_id").loc[ex.true_person_id]
    for trait in ("loyalty", "price_sensitivity", "contact_aversion"):
        t = traits[trait].to_numpy()
        held = (ex.arm == "holdout").to_numpy()
        diff = t[held].mean() - t[~held].mean()
        assert abs(diff) < 4 * t.std() * np.sqrt(1 / held.sum() + 1 / (~held).sum()), trait


def test_only_the_treated_get_sends(world: World) -> None:
    ex, ev = world.exposures, world.events
    sends = ev[
        ev.event_type.isin(["email_send", "sms_send"])
        | ((ev.event_type == "call_contact") & ev.campaign_id.notna())
    ]
    key = lambda d: set(zip(d.campaign_id, d.true_person_id, strict=True))  # noqa: E731
    pushed = ex[ex.channel.isin(["email", "sms", "call_centre"])]
    assert key(sends) == key(pushed[pushed.arm == "treatment"])
    assert not key(sends) & key(pushed[pushed.arm == "holdout"])
    emails = ev[ev.event_type == "email_send"].merge(
        ex[["campaign_id", "true_person_id", "email"]], on=["campaign_id", "true_person_id"]
    )
    assert (emails.email_x == emails.email_y).all(), "the exposure names the address used"


def test_conversions_are_purchases_of_the_offers_product(world: World) -> None:
    products = {o.id: o.product_id for o in load_catalog().offers}
    ex = world.exposures[world.exposures.converted].copy()
    ex["product_id"] = ex.offer_id.map(products)
    buys = world.events[world.events.event_type == "purchase"]
    hit = ex.merge(
        buys,
        left_on=["true_person_id", "product_id", "converted_at"],
        right_on=["true_person_id", "product_id", "ts"],
    )
    assert len(hit) == len(ex)
    treated = hit.arm == "treatment"
    offers = load_catalog()
    net = hit.offer_id.map(lambda o: offers.get(o).value) - treated * hit.offer_id.map(
        lambda o: offers.get(o).cost
    )
    assert np.allclose(hit.value, net), "treated conversions pay the offer's cost"
    window = (ex.converted_at - ex.ts) <= pd.Timedelta(days=30)
    assert window.all() and (ex.converted_at >= ex.ts).all()


def test_campaign_windows_of_one_offer_never_overlap() -> None:
    plans = plan_campaigns(load_catalog(), 90)
    for offer in {p.offer_id for p in plans}:
        days = sorted(p.day for p in plans if p.offer_id == offer)
        assert all(b - a > 30 for a, b in zip(days, days[1:], strict=False))
        assert days[-1] + 30 < 90


def test_short_histories_still_run_every_offer_with_censored_windows() -> None:
    from simulator.world import build_world

    w = build_world(200, 20, 2)
    ex = w.exposures
    assert ex.offer_id.nunique() == 7
    end = pd.Timestamp(w.meta["end"])
    assert (ex.converted_at.dropna() < end).all()
    assert ex.converted.sum() > 0
