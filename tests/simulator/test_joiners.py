"""New customers who sign up inside the window: how many, when, and that nothing of theirs
exists before they joined; the onboarding journey finds them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.clock import DAYS_PER_MONTH, START_US, US_PER_DAY, to_us
from simulator.goals import WorldView
from simulator.joiners import GOAL_ROOM_DAYS, JOIN_RATE_PER_MONTH, SIGN_UP_EVENT, join_span_days
from simulator.journey_entrants import world_entries
from simulator.journey_sim import UNIT_COLUMNS, simulate_journeys
from simulator.lifecycle import RENEWAL_MONTHS
from simulator.people import make_people
from simulator.world import SEEDED_STAGES, World, build_world, summarize
from tests.simulator.conftest import LARGE
from tests.simulator.journey_defs import shipped


def _joined(world: World) -> pd.Series:
    return world.people.tenure_start >= pd.Timestamp(world.meta["start"])


def _tenure(world: World, ids: pd.Series) -> np.ndarray:
    t = world.people.set_index("person_id")["tenure_start"]
    return t.reindex(ids).to_numpy()


def test_about_one_and_a_half_percent_a_month_join(large_world: World) -> None:
    n, days = LARGE["customers"], LARGE["days"]
    share = JOIN_RATE_PER_MONTH * join_span_days(days) / DAYS_PER_MONTH
    count = int(_joined(large_world).sum())
    sd = np.sqrt(n * share * (1 - share))
    assert abs(count - n * share) < 3.5 * sd, (count, n * share)
    assert summarize(large_world)["joined_share"] == round(count / n, 4)


def test_sign_ups_fall_inside_the_window_leaving_the_goal_window(large_world: World) -> None:
    p = large_world.people[_joined(large_world)]
    last = START_US + (LARGE["days"] - GOAL_ROOM_DAYS) * US_PER_DAY
    assert (to_us(p.tenure_start) < last).all()
    assert join_span_days(20) == 20  # a short history: anywhere in it


def test_nothing_of_a_joiner_exists_before_they_joined(large_world: World) -> None:
    w = large_world
    for table, col in (("events", "ts"), ("exposures", "ts"), ("identities", "created_at")):
        df = getattr(w, table)
        before = df[col].to_numpy() < _tenure(w, df.true_person_id)
        assert before.sum() == 0, table
    plans = w.plans
    first = plans.groupby("person_id")["valid_from"].min()
    assert (first == w.people.set_index("person_id").loc[first.index, "tenure_start"]).all()
    p = w.people
    for col in ("churned_at", "disengaged_at", "renewed_at"):
        m = p[col].notna()
        assert (p.loc[m, col] > p.loc[m, "tenure_start"]).all(), col


def test_a_joiners_contract_runs_24_months_from_joining(large_world: World) -> None:
    p = large_world.people[_joined(large_world)]
    prepaid = p.plan == "prepaid"
    assert prepaid.any() and (~prepaid).any()
    assert p.loc[prepaid, "contract_end"].isna().all()
    months = pd.Timedelta(days=RENEWAL_MONTHS * DAYS_PER_MONTH)
    end = p.loc[~prepaid, "contract_end"] - p.loc[~prepaid, "tenure_start"]
    assert (abs(end - months) < pd.Timedelta(seconds=1)).all()


def test_a_joiners_first_event_is_the_sign_up(large_world: World) -> None:
    w = large_world
    ids = w.people.person_id[_joined(w)]
    ev = w.events[w.events.true_person_id.isin(ids)]
    first = ev.groupby("true_person_id")["ts"].transform("min")
    at_sign_up = ev[ev.ts == first]
    assert (at_sign_up.ts.to_numpy() == _tenure(w, at_sign_up.true_person_id)).all()
    kinds = set(SIGN_UP_EVENT.values())
    signed = at_sign_up[at_sign_up.event_type.isin(kinds)].true_person_id
    assert set(signed) == set(ids)
    assert set(at_sign_up.event_type) <= kinds | {"consent_change"}


def test_joiners_touch_nobody_else() -> None:
    """The joiners stage only rewrites the joiners' rows of what the people stage drew."""
    seed = 4
    w = build_world(300, 60, seed)
    ss = np.random.SeedSequence(seed).spawn(len(SEEDED_STAGES))
    drawn = make_people(np.random.default_rng(ss[SEEDED_STAGES.index("people")]), 300).people
    joined = _joined(w).to_numpy()
    assert 0 < joined.sum() < len(joined)
    p, stay = w.people, ~joined
    assert (p.person_id == drawn.person_id).all()
    assert (to_us(p.tenure_start)[stay] == drawn.tenure_start[stay]).all()
    assert (p.churn_base_hazard[stay] == drawn.churn_base_hazard[stay]).all()
    held = p.contract_end.where(p.renewed_at.isna(), p.prior_contract_end)  # before a renewal
    held = np.where(held.isna(), -1, to_us(held.fillna(pd.Timestamp(0, tz="UTC"))))
    assert (held[stay] == drawn.contract_end[stay]).all()
    first = w.plans.groupby("person_id", sort=False).head(1).set_index("person_id")
    for col in ("plan", "arpu"):
        assert (first.loc[drawn.person_id, col].to_numpy() == drawn[col].to_numpy()).all()
    assert (p.tenure_start[joined] != pd.to_datetime(drawn.tenure_start[joined], unit="us",
                                                     utc=True)).all()  # fmt: skip


def test_onboarding_enters_every_joiner_at_sign_up(large_world: World) -> None:
    onboarding = next(j for j in shipped() if j.name == "onboarding")
    start = int(to_us(pd.Timestamp(large_world.meta["start"])))
    end = int(to_us(pd.Timestamp(large_world.meta["end"])))
    e = world_entries(WorldView.of(large_world), onboarding, start, end)
    joiners = large_world.people[_joined(large_world)]
    ids = large_world.people.person_id.to_numpy()[e.person.to_numpy()]
    assert sorted(ids) == sorted(joiners.person_id)
    assert (e.entered_at.to_numpy() == to_us(_tenure(large_world, pd.Series(ids)))).all()


def test_a_journey_nobody_enters_gives_an_empty_run(world: World) -> None:
    onboarding = next(j for j in shipped() if j.name == "onboarding")
    none = pd.DataFrame({"person": np.zeros(0, np.int64), "entered_at": np.zeros(0, np.int64),
                         "product_id": np.zeros(0, object)})  # fmt: skip
    run = simulate_journeys(world, [onboarding], seed=1, entries={"onboarding": none})
    assert list(run.units.columns) == list(UNIT_COLUMNS) and run.units.empty
    assert run.steps.empty
    s = run.summary["onboarding"]
    assert s["entrants"] == 0 and s["n_treated"] == 0 and s["n_holdout"] == 0
    assert run.truth["onboarding"] == 0.0


def test_onboarding_runs_on_the_joiners(large_world: World) -> None:
    onboarding = next(j for j in shipped() if j.name == "onboarding")
    run = simulate_journeys(large_world, [onboarding], seed=7)
    s = run.summary["onboarding"]
    assert s["entrants"] == int(_joined(large_world).sum()) > 20
    assert s["n_treated"] + s["n_holdout"] == s["entrants"] and s["n_treated"] > 0
    assert set(run.steps.step_id) <= {st.id for st in onboarding.steps}
    assert run.steps.sent.any()
