"""Organic activity: abandoned baskets come back about 21% of the time with no contact."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from simulator.comebacks import comeback_rate
from simulator.world import World


def test_abandoned_baskets_come_back_about_21_percent_without_contact(large_world: World) -> None:
    rate = comeback_rate(large_world.events)
    assert rate["abandoned_no_contact"] > 800
    assert 0.17 <= rate["comeback_rate"] <= 0.25, rate
    # few baskets see a contact in a 60-day world: the boost is checked on the mechanism below
    assert 0 <= rate["comeback_rate_contacted"] <= 1


def test_comeback_rate_reads_a_hand_made_stream() -> None:
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    rows = [
        # p1: abandoned, bought 3 days later -> comes back
        ("basket_add", 0, "p1", "acc_case", None),
        ("purchase", 3 * 1440, "p1", "acc_case", None),
        # p2: checkout in the session -> not abandoned
        ("basket_add", 0, "p2", "acc_case", None),
        ("checkout", 5, "p2", "acc_case", None),
        # p3: abandoned, never bought
        ("basket_add", 0, "p3", "acc_case", None),
        # p4: abandoned, bought something else -> no comeback
        ("basket_add", 0, "p4", "acc_case", None),
        ("purchase", 60 * 24, "p4", "dev_watch", None),
        # p5: abandoned but e-mailed by a campaign -> counted as contacted
        ("basket_add", 0, "p5", "acc_case", None),
        ("email_send", 60, "p5", None, "c1"),
        ("purchase", 120, "p5", "acc_case", None),
        # p6: removed in the session -> not abandoned
        ("basket_add", 0, "p6", "acc_case", None),
        ("basket_remove", 2, "p6", "acc_case", None),
        ("usage", 40 * 1440, "p1", None, None),  # the stream runs past every 30-day window
    ]
    ev = pd.DataFrame(
        rows, columns=["event_type", "minutes", "true_person_id", "product_id", "campaign_id"]
    )
    ev["ts"] = t0 + pd.to_timedelta(ev.minutes, unit="min")
    out = comeback_rate(ev.drop(columns="minutes"))
    assert out["abandoned"] == 4
    assert out["abandoned_no_contact"] == 3
    assert np.isclose(out["comeback_rate"], 1 / 3)
    assert out["comeback_rate_contacted"] == 1.0


def test_usage_drops_before_churn(large_world: World) -> None:
    ev = large_world.events
    usage = ev[ev.event_type == "usage"].merge(
        large_world.people[["person_id", "disengaged_at"]],
        left_on="true_person_id",
        right_on="person_id",
    )
    dropped = usage.disengaged_at.notna() & (usage.ts > usage.disengaged_at)
    per_person = usage.assign(dropped=dropped).groupby(["true_person_id", "dropped"]).value.mean()
    ratio = per_person.unstack().dropna()
    assert len(ratio) > 10
    assert (ratio[True] / ratio[False]).median() < 0.6


def test_a_contact_raises_the_comeback_chance() -> None:
    from simulator.buffer import EventBuffer
    from simulator.clock import START_US, US_PER_DAY
    from simulator.comebacks import CONTACT_BOOST, add_comebacks
    from simulator.events import Baskets
    from simulator.identities import make_identities
    from simulator.people import make_people

    rng = np.random.default_rng(0)
    pop = make_people(rng, 300)
    _, keys = make_identities(rng, pop)
    pop.people["churned_at"] = -1
    k = 6000
    person = rng.integers(0, 300, k)
    baskets = Baskets(person, START_US + rng.integers(0, 5, k) * US_PER_DAY, np.zeros(k, int),
                      np.full(k, 19.99), np.full(k, "web", dtype=object))  # fmt: skip
    rates = []
    for contact_ts in (np.zeros(0, np.int64), np.full(300, START_US + 10 * US_PER_DAY)):
        buf = EventBuffer()
        who = np.arange(300) if len(contact_ts) else np.zeros(0, np.int64)
        add_comebacks(np.random.default_rng(1), pop, keys, 60, baskets, who, contact_ts, buf)
        rates.append(sum(c["event_type"][0] == "purchase" for c in buf.chunks for _ in c["ts"]) / k)
    assert 0.13 < rates[0] < 0.19  # the comeback itself; ordinary re-purchases add the rest
    # the same draws with and without a contact: the rate moves by the true boost
    assert rates[1] > rates[0] and rates[1] / rates[0] == pytest.approx(CONTACT_BOOST, rel=0.05)
