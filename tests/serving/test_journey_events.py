"""Events reach running journeys at once: an exit ends a waiting instance the moment a purchase
arrives under another identity of the same person; goals are marked for treated and holdout
instances alike; a wait_for moves on when its e-mail is opened (an event naming it, or a
sender's ``/outcome`` open)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from record.tables import now
from serving import actions
from serving.deps import Deps
from tests.serving.journey_fixtures import (
    activate,
    emailed_and_waiting,
    instance,
    state,
)


def _ingest(deps: Deps, kind: str, at: object, **kw: object) -> dict:
    return actions.ingest({"ts": at.isoformat(), "event_type": kind, **kw}, deps)


def test_a_purchase_under_another_identity_ends_a_24h_wait_at_once(deps: Deps) -> None:
    from features.identity import Identifiers

    activate(deps)
    cid = deps.graph.link(Identifiers(email="ann@example.com", phone="07700 900123"))
    at = now() - timedelta(minutes=10)
    iid, did, mid = emailed_and_waiting(deps, cid, at)
    assert state(deps, iid)["waits"] == ["email_open"]
    bought = at + timedelta(minutes=5)
    res = _ingest(deps, "purchase", bought, channel="store", phone="+44 7700 900123",
                  product_id="data_10gb", value=5.0)  # fmt: skip
    assert res["customer_id"] == cid and res["journeys_ended"] == 1 and res["journey_goals"] == 1
    after = state(deps, iid)
    assert (after["status"], after["end_reason"]) == ("goal", "goal: purchase")
    assert after["ended_at"] == after["goal_at"] == bought and after["due_at"] is None
    assert after["waits"] == []
    assert after["steps"][-1]["result"] == "exit" and after["steps"][-1]["seq"] == 2
    assert after["step_seq"] == 3  # a runner step begun before the exit cannot commit
    assert deps.ledger.decision(did).status == "cancelled"
    from serving import outbox

    assert outbox.pending(deps, "email", claim=False) == []
    again = _ingest(deps, "purchase", bought + timedelta(minutes=1), channel="web",
                    email="ann@example.com", product_id="data_10gb", value=5.0)  # fmt: skip
    assert "journeys_ended" not in again  # ended once


def test_an_exit_rule_without_the_goal_ends_it_as_exited(deps: Deps) -> None:
    activate(deps)
    at = now() - timedelta(minutes=10)
    cid = _ingest(deps, "session_start", at, channel="web", cookie_id="ck-1")["customer_id"]
    iid, did, _ = emailed_and_waiting(deps, cid, at)
    res = _ingest(deps, "checkout", at + timedelta(minutes=1), channel="web", cookie_id="ck-1")
    assert res["journeys_ended"] == 1 and "journey_goals" not in res
    after = state(deps, iid)
    assert (after["status"], after["end_reason"], after["goal_at"]) == (
        "exited",
        "exit: checkout",
        None,
    )
    assert deps.ledger.decision(did).status == "cancelled"


@pytest.mark.parametrize(
    ("product", "days_after", "goal"),
    [
        ("data_10gb", 3, True),  # the basket's product, within 30 days
        ("streaming_plus", 3, False),  # another product: not the goal (product: entry)
        ("data_10gb", 31, False),  # after the goal window
    ],
)
def test_goal_is_marked_for_treated_and_holdout_alike(
    deps: Deps, product: str, days_after: int, goal: bool
) -> None:
    activate(deps)
    entered = now() - timedelta(days=days_after, minutes=5)
    people = {}
    for who, status in (("t@example.com", "completed"), ("h@example.com", "holdout")):
        cid = _ingest(deps, "session_start", entered, channel="web", email=who)["customer_id"]
        people[who] = (cid, instance(deps, cid, None, entered=entered, status=status))
    for who, (_cid, iid) in people.items():
        _ingest(deps, "purchase", now() - timedelta(minutes=1), channel="store", email=who,
                product_id=product, value=5.0)  # fmt: skip
        after = state(deps, iid)
        assert (after["goal_at"] is not None) == goal, who
        assert after["status"] in ("completed", "holdout")  # neither was live: nothing ends


def test_wait_for_is_resolved_by_an_event_about_its_email(deps: Deps) -> None:
    activate(deps)
    at = now() - timedelta(minutes=10)
    cid = _ingest(deps, "session_start", at, channel="web", cookie_id="ck-2")["customer_id"]
    iid, did, mid = emailed_and_waiting(deps, cid, at)
    other = _ingest(deps, "email_open", at + timedelta(minutes=1), channel="email",
                    cookie_id="ck-2", campaign_id="another-message")  # fmt: skip
    assert "journey_waits_resolved" not in other
    assert state(deps, iid)["step_id"] == "opened"
    res = _ingest(deps, "email_open", at + timedelta(minutes=2), channel="email",
                  cookie_id="ck-2", campaign_id=mid)  # fmt: skip
    assert res["journey_waits_resolved"] == 1
    after = state(deps, iid)  # its on_event step (the exit) was taken at once, not at a poll
    assert (after["status"], after["step_id"], after["waits"]) == ("completed", "done", [])
    assert [s["result"] for s in after["steps"]] == ["sent", "waited", "event", "exit"]
    assert after["steps"][2]["detail"] == "email_open"


def test_wait_for_is_resolved_by_an_outcome_open(deps: Deps) -> None:
    activate(deps)
    at = now() - timedelta(minutes=10)
    cid = _ingest(deps, "session_start", at, channel="web", cookie_id="ck-3")["customer_id"]
    iid, did, _ = emailed_and_waiting(deps, cid, at)
    opened = actions.OutcomeRequest(idempotency_key="open-1", decision_id=did, type="open")
    assert actions.record_outcome(opened, deps).recorded is True
    after = state(deps, iid)
    assert (after["step_id"], after["waits"]) == ("done", [])
    assert [s["result"] for s in after["steps"]][-2:] == ["event", "exit"]
    assert after["steps"][-2]["decision_id"] == did
    assert deps.ledger.decision(did).status == "delivered"  # opened: evidently delivered
    assert actions.record_outcome(opened, deps).recorded is False  # a retried report


def test_a_late_open_does_not_resolve_a_timed_out_wait(deps: Deps) -> None:
    activate(deps)
    at = now() - timedelta(days=2)
    cid = _ingest(deps, "session_start", now(), channel="web", cookie_id="ck-4")["customer_id"]
    iid, did, _ = emailed_and_waiting(deps, cid, at)  # expired a day ago; no runner took it yet
    opened = actions.OutcomeRequest(idempotency_key="open-2", decision_id=did, type="open")
    actions.record_outcome(opened, deps)
    assert state(deps, iid)["step_id"] == "opened"  # the runner takes the timeout branch


def test_bad_open_outcomes(deps: Deps) -> None:
    activate(deps)
    at = now() - timedelta(minutes=10)
    cid = _ingest(deps, "session_start", at, channel="web", cookie_id="ck-5")["customer_id"]
    _, did, _ = emailed_and_waiting(deps, cid, at)
    with pytest.raises(ValidationError, match="decision_id\n  an open needs the message's"):
        actions.record_outcome(
            actions.OutcomeRequest(idempotency_key="o", customer_id=cid, type="open"), deps
        )
    _ingest(deps, "purchase", at + timedelta(minutes=1), channel="store", cookie_id="ck-5",
            product_id="data_10gb", value=5.0)  # fmt: skip
    with pytest.raises(ValidationError, match="decision_id\n  its message was cancelled"):
        actions.record_outcome(
            actions.OutcomeRequest(idempotency_key="o", decision_id=did, type="open"), deps
        )
