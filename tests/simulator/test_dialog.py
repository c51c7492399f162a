"""The message-response model: delivery and engagement rates, fatigue, aversion, the live
responder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from simulator.clock import START_US, US_PER_DAY, to_timestamp
from simulator.dialog import (
    CLICKED,
    DELIVERED,
    OPENED,
    draw_stages,
    goal_shift,
    respond,
    stage_probs,
)
from simulator.world import World


def test_each_further_contact_adds_less() -> None:
    calm = np.full(4, 0.1)
    shifts = [
        goal_shift("email", np.full(4, OPENED), "intent", calm, np.full(4, k))[0] for k in range(4)
    ]
    assert shifts[0] > 0
    gains = np.diff([0.0, *np.cumsum(shifts)])
    assert all(a > b > 0 for a, b in zip(gains, gains[1:], strict=False)), gains


def test_the_contact_averse_lose_and_lose_more_with_each_contact() -> None:
    averse = np.full(3, 0.9)
    shifts = goal_shift("sms", np.full(3, DELIVERED), "calendar", averse, np.arange(3.0))
    assert (shifts < 0).all()
    assert shifts[0] > shifts[1] > shifts[2]
    calm = goal_shift("sms", np.full(3, DELIVERED), "calendar", np.full(3, 0.1), np.zeros(3))
    assert (calm > 0).all()


def test_intent_lifts_more_than_calendar_and_undelivered_does_nothing() -> None:
    a, z = np.full(4, 0.2), np.zeros(4)
    stages = np.array([0, DELIVERED, OPENED, CLICKED])
    intent = goal_shift("email", stages, "intent", a, z)
    calendar = goal_shift("email", stages, "calendar", a, z)
    assert intent[0] == calendar[0] == 0
    assert (intent[1:] > calendar[1:]).all()
    assert intent[1] < intent[2] < intent[3]


def test_drawn_stages_follow_their_probabilities() -> None:
    rng = np.random.default_rng(3)
    n = 40_000
    tech, averse = rng.random(n), rng.beta(1.5, 5, n)
    has_app = rng.random(n) < 0.6
    for ch in ("email", "sms", "call_centre", "web", "app", "paid_media"):
        stage, d_at, o_at, c_at = draw_stages(rng, ch, tech, averse, has_app, np.full(n, START_US))
        expected = stage_probs(ch, tech, averse, has_app).mean(axis=0)
        seen = np.bincount(stage, minlength=4) / n
        assert np.allclose(seen, expected, atol=0.01), (ch, seen, expected)
        assert ((d_at >= 0) == (stage >= DELIVERED)).all()
        assert (o_at[stage >= OPENED] >= d_at[stage >= OPENED]).all()
        assert (c_at[stage == CLICKED] > o_at[stage == CLICKED]).all()
    email = stage_probs("email", tech, averse, has_app)
    assert abs(1 - email[:, 0].mean() - 0.97) < 1e-9  # deliverability
    assert 0.25 < email[:, 2:].sum(axis=1).mean() / 0.97 < 0.35  # open rate
    app = stage_probs("app", tech, averse, has_app)
    assert (app[~has_app, 0] == 1).all()  # no app, no app message
    call = stage_probs("call_centre", tech, averse, has_app)
    assert 0.3 < 1 - call[:, 0].mean() < 0.4  # a call list reaches about a third


def _messages(world: World, n: int, channel: str) -> pd.DataFrame:
    people = world.people["person_id"].to_numpy()
    return pd.DataFrame(
        {
            "person_id": np.resize(people, n),
            "channel": channel,
            "decision_id": [f"d{i}" for i in range(n)],
            "ts": to_timestamp(np.full(n, START_US + 5 * US_PER_DAY)),
            "p_untreated": 0.2,
        }
    )


def test_responder_turns_messages_into_events(world: World) -> None:
    msgs = pd.concat([_messages(world, 3000, "email"), _messages(world, 3000, "sms")])
    msgs["decision_id"] = [f"d{i}" for i in range(len(msgs))]
    ev = respond(world, msgs, np.random.default_rng(1))
    again = respond(world, msgs, np.random.default_rng(1))
    pd.testing.assert_frame_equal(ev, again)
    email = ev[ev.channel == "email"]
    delivered = (email.event_type == "delivered").sum() / 3000
    assert 0.95 < delivered < 0.99
    opened = email[email.event_type == "email_open"]
    clicked = email[email.event_type == "email_click"]
    assert set(clicked.decision_id) <= set(opened.decision_id) <= set(email.decision_id)
    assert 0.2 < len(opened) / 3000 < 0.4
    first = ev.groupby("decision_id")["ts"].min()
    sent = msgs.set_index("decision_id")["ts"]
    assert (first >= sent.reindex(first.index)).all()
    assert set(ev.event_type) <= {"delivered", "email_open", "email_click", "sms_click", "purchase"}
    assert (ev.loc[ev.event_type == "delivered", "outcome"] == "delivered").all()
    assert ev.loc[ev.event_type == "sms_click", "outcome"].eq("click").all()
    buys = ev[ev.event_type == "purchase"]
    assert 0 < len(buys) < 0.1 * len(msgs)  # the share the message adds over 20%
    assert ev.loc[ev.channel == "sms", "phone"].notna().mean() > 0.9


def test_responder_refuses_an_unknown_person(world: World) -> None:
    msgs = _messages(world, 2, "email")
    msgs.loc[1, "person_id"] = "P9999999"
    with pytest.raises(ValueError, match=r"^person_id: unknown person 'P9999999'$"):
        respond(world, msgs, np.random.default_rng(0))
