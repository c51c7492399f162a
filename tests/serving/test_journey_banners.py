"""A journey's web banner is shown by the customer's next web visit, once, restricted to the
journey's offers and logged under the journey's experiment; the agent sees the customer's
journeys in the profile, and can end or pause them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from record.tables import now
from serving import actions, outbox
from serving.decide import DecideRequest, decide
from serving.deps import Deps
from tests.serving.conftest import CHANNEL
from tests.serving.journey_fixtures import (
    NAME,
    activate,
    emailed_and_waiting,
    instance,
    state,
    step_row,
)


def _banner(deps: Deps, cid: str) -> str:
    """An instance whose banner step ran (the runner's row), now waiting out the hour."""
    at = now() - timedelta(minutes=5)
    iid = instance(deps, cid, "email", entered=at, due=at + timedelta(hours=1))
    step_row(deps, iid, "banner", "banner", at, channel="web")
    return iid


def test_banner_is_shown_once_on_the_next_web_visit(deps: Deps, profiles: dict) -> None:
    j = activate(deps)
    profiles["c-post"]["consent_email"] = True
    iid = _banner(deps, "c-post")
    app = decide(DecideRequest(customer_id="c-post", channel="app"), deps)
    assert app.experiment == deps.settings.experiment  # a web banner waits for the web
    shown = decide(DecideRequest(customer_id="c-post", channel="web"), deps)
    assert (shown.experiment, shown.arm) == (j.experiment, "treatment")
    assert shown.offers and {o.offer_id for o in shown.offers} <= {*j.offers, "no_offer"}
    row = deps.ledger.decision(shown.decision_id)
    assert row.context["journey"] == f"{NAME}:banner"
    assert all(o in j.offers or o == "no_offer" for o in row.probabilities)
    assert state(deps, iid)["steps"][0]["decision_id"] == shown.decision_id  # consumed
    again = decide(DecideRequest(customer_id="c-post", channel="web"), deps)
    assert again.experiment == deps.settings.experiment


def test_an_ended_journeys_banner_is_not_shown(deps: Deps) -> None:
    activate(deps)
    cid = actions.ingest(
        {"ts": now().isoformat(), "channel": "web", "event_type": "session_start",
         "cookie_id": "ck-b"}, deps)["customer_id"]  # fmt: skip
    _banner(deps, cid)
    bought = {"ts": now().isoformat(), "channel": "store", "event_type": "purchase",
              "cookie_id": "ck-b", "product_id": "data_10gb", "value": 5.0}  # fmt: skip
    actions.ingest(bought, deps)
    assert decide(DecideRequest(customer_id=cid, channel="web"), deps).experiment == "nbo"


def test_no_banner_lookup_without_a_banner_journey(deps: Deps) -> None:
    from serving import journey_banners

    assert journey_banners.possible(deps, "web") is False  # no journey active: /decide skips it
    activate(deps)
    assert journey_banners.possible(deps, "web") is False  # believed for CHECK_SECONDS
    journey_banners._checked.clear()
    assert journey_banners.possible(deps, "web") is True
    assert journey_banners.possible(deps, "email") is False  # no banner on e-mail: no lookup


def test_profile_shows_step_and_next_planned_contact(deps: Deps) -> None:
    activate(deps)
    at = now() - timedelta(minutes=10)
    cid = actions.ingest({"ts": at.isoformat(), "channel": "web", "event_type": "session_start",
                          "cookie_id": "ck-p"}, deps)["customer_id"]  # fmt: skip
    iid, _, _ = emailed_and_waiting(deps, cid, at)
    (view,) = actions.profile(cid, deps).journeys
    assert (view.journey, view.instance_id, view.step, view.status) == (NAME, iid, "opened",
                                                                         "active")  # fmt: skip
    assert view.entered_at == at - timedelta(hours=1)
    # nothing happens: the open times out at the due time and the SMS goes then
    contact = view.next_contact
    sms = ("sms", "sms", at + timedelta(hours=24))
    assert (contact.step, contact.channel, contact.due_at) == sms
    assert state(deps, iid)["due_at"] == contact.due_at


@pytest.fixture
def served_deps(client: TestClient) -> Iterator[Deps]:
    """The in-process service's deps with the journey active, made inactive afterwards (the
    service is shared by the session)."""
    from serving.service import STATE

    activate(STATE.deps)
    try:
        yield STATE.deps
    finally:
        (Path(STATE.deps.settings.home) / "journeys" / f"{NAME}.yaml").unlink()


def test_agent_pauses_resumes_and_ends_a_journey(client: TestClient, served_deps: Deps) -> None:
    deps = served_deps
    at = now() - timedelta(minutes=10)
    visit = {"ts": at.isoformat(), "channel": "web", "event_type": "session_start",
             "cookie_id": "ck-agent"}  # fmt: skip
    cid = client.post("/events", headers=CHANNEL, json=visit).json()["customer_id"]
    iid, did, _ = emailed_and_waiting(deps, cid, at)
    body = {"customer_id": cid, "journey": NAME, "reason": "customer asked on the phone"}
    r = client.post("/journeys/pause", json=body, headers=CHANNEL)
    assert r.status_code == 200 and r.json()["status"] == "paused"
    view = client.get(f"/profile/{cid}", headers=CHANNEL).json()["journeys"]
    assert [(v["status"], v["next_contact"]["due_at"]) for v in view] == [("paused", None)]
    r = client.post("/journeys/pause", json=body, headers=CHANNEL)
    refused = (400, "action: the journey is paused, it cannot pause")
    assert (r.status_code, r.json()["error"]) == refused
    assert client.post("/journeys/resume", json=body, headers=CHANNEL).json()["status"] == "active"
    r = client.post("/journeys/end", json=body, headers=CHANNEL)
    assert r.status_code == 200 and r.json()["instance_id"] == iid
    after = state(deps, iid)
    assert (after["status"], after["end_reason"], after["waits"]) == (
        "ended",
        "agent: customer asked on the phone",
        [],
    )
    assert [s["result"] for s in after["steps"]][-3:] == ["pause", "resume", "exit"]
    assert deps.ledger.decision(did).status == "cancelled"
    assert outbox.pending(deps, "email", claim=False) == []
    assert client.get(f"/profile/{cid}", headers=CHANNEL).json()["journeys"] == []


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error"),
    [
        ("/journeys/stop", {"customer_id": "c", "journey": NAME}, CHANNEL, 400,
         "action: must be end, pause or resume, got 'stop'"),
        ("/journeys/end", {"journey": NAME}, CHANNEL, 400, "customer_id: required"),
        ("/journeys/end", {"customer_id": "c", "journey": NAME, "colour": "red"}, CHANNEL, 400,
         "colour: unknown field"),
        ("/journeys/end", {"customer_id": "c", "journey": "x" * 41}, CHANNEL, 400,
         "journey: String should have at most 40 characters"),
        ("/journeys/end", {"customer_id": "", "journey": NAME}, CHANNEL, 400,
         "customer_id: String should have at least 1 character"),
        ("/journeys/end", {"customer_id": "c", "journey": NAME, "reason": "r" * 161}, CHANNEL,
         400, "reason: String should have at most 160 characters"),
        ("/journeys/end", ["not", "an", "object"], CHANNEL, 400,
         "body: Input should be a valid dictionary or instance of JourneyAction"),
        ("/journeys/end", {"customer_id": "nobody", "journey": NAME}, CHANNEL, 404,
         "journey: customer 'nobody' is not in journey 'abandoned_basket'"),
        ("/journeys/end", {"customer_id": "c", "journey": NAME}, {}, 401, "X-API-Key: missing"),
    ],
)  # fmt: skip
def test_bad_journey_actions(
    client: TestClient, path: str, body: object, headers: dict, status: int, error: str
) -> None:
    r = client.post(path, json=body, headers=headers)
    assert (r.status_code, r.json()["error"]) == (status, error)


def test_erasure_deletes_the_persons_journey_rows(deps: Deps) -> None:
    from sqlalchemy import func, select

    from journeys.intent_state import journey_intent_events, journey_pending_entries
    from journeys.state import journey_instances, journey_steps, journey_waits

    activate(deps)
    at = now() - timedelta(minutes=10)
    cid = actions.ingest({"ts": at.isoformat(), "channel": "web", "event_type": "basket_add",
                          "email": "gone@example.com", "product_id": "data_10gb",
                          "value": 5.0}, deps)["customer_id"]  # fmt: skip
    emailed_and_waiting(deps, cid, at)
    tables = (journey_instances, journey_steps, journey_waits, journey_pending_entries)

    def rows() -> dict[str, int]:
        with deps.ledger.engine.connect() as conn:
            return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                    for t in (*tables, journey_intent_events)}  # fmt: skip

    assert rows() == {"journey_instances": 1, "journey_steps": 2, "journey_waits": 1,
                      "journey_pending_entries": 1, "journey_intent_events": 0}  # fmt: skip
    result = actions.erase(actions.EraseRequest(customer_id=cid), deps)
    assert result["ledger"]["journey_steps"] == 2 and result["ledger"]["journey_instances"] == 1
    assert set(rows().values()) == {0}


def test_a_refused_request_leaves_the_banner_waiting(deps: Deps) -> None:
    """An undeclared campaign is refused before the banner is claimed: decide_many raises
    and logs nothing; the batcher refuses that request alone; the next visit shows it."""
    from pydantic import ValidationError

    from serving.decide import decide_many, decide_outcomes

    j = activate(deps)
    iid = _banner(deps, "c-post")
    bad = DecideRequest(customer_id="c-post", channel="web", context={"campaign": "nope"})
    good = DecideRequest(customer_id="c-pre", channel="web")
    with pytest.raises(ValidationError, match="unknown experiment 'nope'"):
        decide_many([good, bad], deps)
    assert deps.ledger.counts()["decisions"] == 0
    outcomes = decide_outcomes([bad, good], deps, verify=True, isolate=True)
    assert isinstance(outcomes[0], ValidationError) and outcomes[1].customer_id == "c-pre"
    assert deps.ledger.counts()["decisions"] == 1
    assert state(deps, iid)["steps"][0]["decision_id"] is None  # still waiting
    shown = decide(DecideRequest(customer_id="c-post", channel="web"), deps)
    assert shown.experiment == j.experiment
