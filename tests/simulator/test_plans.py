"""Plans and ARPU change over time (item 13): the world keeps the CRM's history, people hold
today's values, and the truth reads the plan valid at each moment."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.clock import US_PER_DAY, to_us
from simulator.truth import Truth
from simulator.world import World


def _changes(plans: pd.DataFrame) -> pd.DataFrame:
    """Each row after a person's first, with the plan it replaced."""
    prev = plans.groupby("person_id")["plan"].shift()
    return plans.assign(before=prev).loc[prev.notna()]


def test_a_minority_change_plan_and_people_hold_the_latest(large_world: World) -> None:
    plans, people = large_world.plans, large_world.people.set_index("person_id")
    assert plans.groupby("person_id")["valid_from"].is_monotonic_increasing.all()
    first = plans.groupby("person_id").head(1).set_index("person_id")
    assert (first["valid_from"] == people.loc[first.index, "tenure_start"]).all()
    last = plans.groupby("person_id").tail(1).set_index("person_id").loc[people.index]
    assert (last["plan"] == people["plan"]).all() and np.allclose(last["arpu"], people["arpu"])

    changes = _changes(plans)
    start = pd.Timestamp(large_world.meta["start"])
    assert (changes["valid_from"] >= start).all()
    assert (changes["valid_from"] < pd.Timestamp(large_world.meta["end"])).all()
    moved = changes.loc[changes["plan"] != changes["before"], "person_id"].nunique()
    assert 0.01 < moved / len(people) < 0.1, moved  # a minority changes plan in 60 days
    assert 0.03 < changes["person_id"].nunique() / len(people) < 0.15  # ARPU drift included
    # prepaid stays prepaid (its contract facts would no longer hold otherwise)
    assert ((changes["plan"] == "prepaid") == (changes["before"] == "prepaid")).all()
    churned = changes["person_id"].map(people["churned_at"])
    assert not (changes["valid_from"] >= churned).any(), "no plan change after a churn"


def test_truth_reads_the_plan_valid_at_each_moment(large_truth: Truth, large_world: World) -> None:
    """data_addon is for prepaid, postpaid_s and postpaid_m: a move between postpaid_m and
    postpaid_l switches it on or off at the change, never before."""
    changes = _changes(large_world.plans)
    cross = changes.loc[
        changes["before"].isin(["postpaid_m", "postpaid_l"])
        & changes["plan"].isin(["postpaid_m", "postpaid_l"])
        & (changes["before"] != changes["plan"])
    ]
    churned = cross["person_id"].map(large_world.people.set_index("person_id")["churned_at"])
    cross = cross.loc[churned.isna()]
    assert len(cross) >= 3
    at = to_us(cross["valid_from"])
    n = len(cross)
    before, _ = large_truth.conversion_probs(
        cross["person_id"], at - US_PER_DAY, ["web"] * n, ["data_addon"] * n
    )
    after, _ = large_truth.conversion_probs(
        cross["person_id"], at + 1, ["web"] * n, ["data_addon"] * n
    )
    upgraded = (cross["plan"] == "postpaid_l").to_numpy()
    assert ((before > 0) == upgraded).all() and ((after > 0) == ~upgraded).all()


def test_same_seed_same_plan_history() -> None:
    from simulator.world import build_world

    a, b = build_world(120, 30, 9).plans, build_world(120, 30, 9).plans
    pd.testing.assert_frame_equal(a, b)
