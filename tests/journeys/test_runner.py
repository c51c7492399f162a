"""The runner on a real SQLite ledger: entry rules, each step's effect, the outbox, caps
shared with /decide, quiet hours and versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from journeys.state import journey_steps, journey_waits
from record.assignment import assign
from record.tables import DecisionRow, outbox
from serving import journey_defs
from serving import journey_runner as jr
from serving.decide import DecideRequest, decide
from serving.deps import Deps
from tests.journeys.conftest import EXAMPLES, journey

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # noon in London (winter: UTC)
BASKET = journey(EXAMPLES / "abandoned_basket.yaml", holdout_share=0.0)


def _steps(deps: Deps, instance_id: str) -> list[dict[str, Any]]:
    s = journey_steps.c
    with deps.ledger.engine.connect() as conn:
        q = select(journey_steps).where(s.instance_id == instance_id).order_by(s.seq)
        return [dict(r) for r in conn.execute(q).mappings()]


def _outbox(deps: Deps) -> list[dict[str, Any]]:
    with deps.ledger.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(outbox)).mappings()]


def _instance(deps: Deps, instance_id: str) -> dict[str, Any]:
    return next(r for r in jr.instances(deps.ledger.engine) if r["instance_id"] == instance_id)


def _customers(profiles: dict, n: int, like: str = "c-post", **changes: Any) -> list[str]:
    ids = [f"{like}-{k}" for k in range(n)]
    for cid in ids:
        profiles[cid] = {**profiles[like], **changes}
    return ids


def test_the_abandoned_basket_dialog_step_by_step(deps: Deps, profiles: dict) -> None:
    """banner -> wait 1h -> e-mail in the outbox -> wait for its open -> timeout -> SMS
    (no consent: skipped, with the reason) -> a day to click it -> timeout -> exit. Without a
    model every allowed offer ties; the journey does not list no_offer, so an e-mail is skipped
    only when none of its offers is allowed for the customer: 12 customers."""
    people = _customers(profiles, 12)
    entered = [jr.enter(BASKET, c, T0, {"basket": ["data_10gb"]}, deps) for c in people]
    assert all(e is not None and e["arm"] == "treatment" for e in entered)
    assert jr.run_due(deps, T0) == 12 * 2  # banner, then the wait is taken at once
    assert jr.run_due(deps, T0 + timedelta(minutes=59)) == 0  # the hour is not over
    assert jr.run_due(deps, T0 + timedelta(hours=1)) == 12 * 2  # e-mail, then the wait_for
    sent = [m for m in _outbox(deps)]
    assert 1 <= len(sent) <= 12 and {m["channel"] for m in sent} == {"email"}
    for e in entered:
        steps = _steps(deps, e["instance_id"])
        assert [s["step_id"] for s in steps] == ["banner", "wait_hour", "email", "opened"]
        assert [s["result"] for s in steps][:2] == ["banner", "waited"]
        email = steps[2]
        with deps.ledger.engine.connect() as conn:
            wait = (
                conn.execute(
                    select(journey_waits).where(journey_waits.c.instance_id == e["instance_id"])
                )
                .mappings()
                .one()
            )
        assert wait["event_type"] == "email_open"
        assert wait["expires_at"].replace(tzinfo=UTC) == T0 + timedelta(hours=25)
        if email["result"] == "skipped":
            assert email["detail"].startswith("email: no offer")
            assert wait["message_id"] is None
            continue
        assert email["result"] == "sent" and email["channel"] == "email"
        (msg,) = [m for m in sent if m["message_id"] == email["message_id"]]
        assert msg["trigger"] == "journey:abandoned_basket:email"
        assert msg["message_id"] == jr.message_id(e["instance_id"], 2)
        assert wait["message_id"] == msg["message_id"]
        row = deps.ledger.decision(msg["decision_id"])
        assert row.status == "pending" and row.channel == "email"
        assert row.context == {"journey": "abandoned_basket:email", "basket": ["data_10gb"]}
        assert row.experiment == "journey:abandoned_basket" and row.offer_id in BASKET.offers
        assert row.propensity == pytest.approx(1 / 4)  # 4 eligible offers; no_offer is not listed
    assert jr.run_due(deps, T0 + timedelta(hours=25)) == 12 * 3  # timeout, sms, wait to click
    for e in entered:
        steps = _steps(deps, e["instance_id"])
        assert [s["result"] for s in steps][4:] == ["timeout", "skipped", "waited"]
        assert steps[5]["detail"].startswith("sms: no offer (")  # c-post: no SMS consent
        assert "no marketing consent for sms" in steps[5]["detail"]
    assert jr.run_due(deps, T0 + timedelta(hours=49)) == 12 * 2  # no click: timeout, exit
    for e in entered:
        assert [s["result"] for s in _steps(deps, e["instance_id"])][7:] == ["timeout", "exit"]
        inst = _instance(deps, e["instance_id"])
        assert (inst["status"], inst["due_at"], inst["step_seq"]) == ("completed", None, 9)
    assert jr.run_due(deps, T0 + timedelta(days=3)) == 0
    with deps.ledger.engine.connect() as conn:
        assert conn.execute(select(journey_waits)).first() is None


def test_one_live_instance_and_reentry_after_the_cool_down(deps: Deps) -> None:
    j = journey(
        "{name: once, offers: [data_addon], entry: {type: intent, event: basket_add},"
        " steps: [{id: w, type: wait, duration: 1h, next: done}, {id: done, type: exit}]}",
        reentry_after="2d",
        holdout_share=0.0,
    )
    first = jr.enter(j, "c-post", T0, {}, deps)
    assert first is not None
    assert jr.enter(j, "c-post", T0 + timedelta(minutes=5), {}, deps) is None  # live
    assert jr.run_due(deps, T0) == 1  # the wait
    assert jr.run_due(deps, T0 + timedelta(hours=1)) == 1  # the exit: ended at 13:00
    assert jr.enter(j, "c-post", T0 + timedelta(days=2), {}, deps) is None  # 47h after end
    again = jr.enter(j, "c-post", T0 + timedelta(days=2, hours=1), {}, deps)
    assert again is not None and again["instance_id"] != first["instance_id"]
    assert jr.enter(j, "c-pre", T0, {}, deps) is not None  # another customer: their own


def test_the_live_index_refuses_a_second_instance_written_around_enter(deps: Deps) -> None:
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from journeys.state import journey_instances

    row = jr.enter(BASKET, "c-post", T0, {}, deps)
    assert row is not None
    with pytest.raises(IntegrityError), deps.ledger.engine.begin() as conn:
        conn.execute(insert(journey_instances), [{**row, "instance_id": "other"}])


def test_holdouts_global_and_journey(deps: Deps, settings: Any) -> None:
    """The global holdout enters nothing (only its draw is recorded); the journey's holdout
    gets an instance with no steps; shares as configured."""
    j = journey(EXAMPLES / "abandoned_basket.yaml", holdout_share=0.3)
    settings.global_holdout_share = 0.2
    rows = {f"h{k}": jr.enter(j, f"h{k}", T0, {}, deps) for k in range(400)}
    salt = settings.assignment_salt
    for cid, row in rows.items():
        if assign(cid, "global", 0.2, salt) == "holdout":
            assert row is None
        elif assign(cid, j.experiment, 0.3, salt) == "holdout":
            assert row is not None
            assert (row["arm"], row["status"], row["step_id"], row["due_at"]) == (
                "holdout",
                "holdout",
                None,
                None,
            )
        else:
            assert row is not None and (row["arm"], row["status"]) == ("treatment", "active")
    stored = deps.ledger.first_assignments([j.experiment, "global"], list(rows))
    assert set(stored) == {"global", j.experiment}
    out = sum(r is None for r in rows.values())
    held = sum(r is not None and r["arm"] == "holdout" for r in rows.values())
    assert 80 - 35 < out < 80 + 35 and 96 - 40 < held < 96 + 40  # 0.2 x 400; 0.3 x 320
    assert jr.run_due(deps, T0) == 2 * (400 - out - held)  # holdouts take no steps


def test_the_journey_holdout_is_sticky_through_an_identity_merge(deps: Deps, settings) -> None:
    from features.identity import Identifiers

    old = deps.graph.link(Identifiers(login_id="ann-login"))
    anon = deps.graph.link(Identifiers(cookie_id="cookie-1"))
    j = journey(EXAMPLES / "abandoned_basket.yaml", holdout_share=0.5, reentry_after="1h")
    settings.assignment_salt = next(
        s
        for s in (f"s{i}" for i in range(500))
        if assign(anon, j.experiment, 0.5, s) != assign(old, j.experiment, 0.5, s)
    )
    first = jr.enter(j, anon, T0, {}, deps)
    assert deps.graph.link(Identifiers(login_id="ann-login", cookie_id="cookie-1")) == old
    later = jr.enter(j, old, T0 + timedelta(days=1), {}, deps)
    assert later is not None and later["arm"] == first["arm"]
    assert assign(old, j.experiment, 0.5, settings.assignment_salt) != first["arm"]


def test_quiet_hours_postpone_a_message_to_their_end(deps: Deps, profiles: dict) -> None:
    j = journey(
        "{name: late, offers: [device_upgrade, data_addon, streaming_bundle, family_plan],"
        " entry: {type: intent, event: basket_add},"
        " steps: [{id: email, type: message, channel: email}]}",
        quiet_hours={"email": "21:00-08:00"},
        holdout_share=0.0,
    )
    people = _customers(profiles, 6)
    late = T0 + timedelta(hours=10)  # 22:00 London
    rows = [jr.enter(j, c, late, {}, deps) for c in people]
    assert jr.run_due(deps, late) == 0  # postponed: no step taken, nothing written
    morning = datetime(2026, 1, 16, 8, 0, tzinfo=UTC)
    for r in rows:
        inst = _instance(deps, r["instance_id"])
        assert (inst["step_id"], inst["step_seq"]) == ("email", 0)
        assert inst["due_at"].replace(tzinfo=UTC) == morning
        assert _steps(deps, r["instance_id"]) == []
    assert jr.run_due(deps, morning - timedelta(minutes=1)) == 0
    assert jr.run_due(deps, morning) == 6
    assert all(_steps(deps, r["instance_id"])[0]["ts"].hour == 8 for r in rows)
    assert _outbox(deps)  # sent in the morning, not skipped


def _email_shows(deps: Deps, cid: str, n: int) -> None:
    for k in range(n):
        deps.ledger.record_decision(
            DecisionRow(
                decision_id=f"d-{cid}-{k}",
                ts=T0 - timedelta(days=1),
                customer_id=cid,
                channel="email",
                experiment="nbo",
                arm="treatment",
                offer_id="streaming_bundle",
                propensity=0.5,
            )
        )


EMAIL_ONLY = (
    "{name: mail, offers: [device_upgrade, data_addon, streaming_bundle, family_plan],"
    " entry: {type: intent, event: basket_add},"
    " steps: [{id: email, type: message, channel: email}]}"
)


def test_caps_kept_by_decide_stop_a_journey_email(deps: Deps) -> None:
    """Two e-mails this week from /decide's campaigns: the journey's e-mail is skipped."""
    _email_shows(deps, "c-post", 2)
    j = journey(EMAIL_ONLY, holdout_share=0.0)
    row = jr.enter(j, "c-post", T0, {}, deps)
    assert jr.run_due(deps, T0) == 1
    (step,) = _steps(deps, row["instance_id"])
    assert step["result"] == "skipped" and "email contact cap 2 reached" in step["detail"]
    assert _outbox(deps) == []
    assert _instance(deps, row["instance_id"])["status"] == "completed"


def test_a_journey_email_counts_against_decides_cap(
    deps: Deps, profiles: dict, settings: Any
) -> None:
    settings.contact_caps = {"email": 2}
    people = _customers(profiles, 8)
    j = journey(EMAIL_ONLY, holdout_share=0.0)
    for cid in people:
        _email_shows(deps, cid, 1)
        jr.enter(j, cid, T0, {}, deps)
    assert jr.run_due(deps, T0) == 8
    mailed = {m["customer_id"] for m in _outbox(deps)}
    assert mailed  # 8 draws of 4 offers against doing nothing
    deps.clock = lambda: T0 + timedelta(minutes=1)
    for cid in people:
        answer = decide(DecideRequest(customer_id=cid, channel="email"), deps)
        row = deps.ledger.decision(answer.decision_id)
        capped = {o for o, why in row.scores["dropped"].items() if "contact cap 2" in why}
        assert (set(j.offers) <= capped) == (cid in mailed), (cid, row.scores["dropped"])
        assert (answer.offers[0].offer_id == "no_offer") or cid not in mailed


def test_best_channel_takes_a_channel_the_customer_consents_to(deps: Deps, profiles: dict) -> None:
    j = journey(
        "{name: best, offers: [device_upgrade, data_addon, streaming_bundle],"
        " entry: {type: intent, event: basket_add},"
        " steps: [{id: reach, type: message, channel: best_channel, channels: [email, sms]}]}",
        holdout_share=0.0,
    )
    people = _customers(profiles, 10, consent_email=False, consent_sms=True)
    for cid in people:
        jr.enter(j, cid, T0, {}, deps)
    assert jr.run_due(deps, T0) == 10
    sent = _outbox(deps)
    assert sent and {m["channel"] for m in sent} == {"sms"}
    assert all(m["trigger"] == "journey:best:reach" for m in sent)


def test_splits_follow_the_profile_and_record_the_path(deps: Deps, profiles: dict) -> None:
    j = journey(
        """
name: paths
offers: [data_addon]
entry: {type: intent, event: basket_add}
steps:
  - id: pick
    type: split
    branches: [{when: [{field: plan, op: "==", value: prepaid}], next: ab}]
    otherwise: done
  - id: ab
    type: random_split
    branches: [{name: left, share: 0.5, next: done}, {name: right, share: 0.5, next: done}]
  - {id: done, type: exit}
""",
        holdout_share=0.0,
    )
    pre = _customers(profiles, 30, like="c-pre")
    rows = [jr.enter(j, c, T0, {}, deps) for c in [*pre, "c-post"]]
    assert jr.run_due(deps, T0) == 30 * 3 + 2
    paths = [_instance(deps, r["instance_id"])["path"] for r in rows]
    assert paths[-1] is None and set(paths[:-1]) == {"left", "right"}
    assert [s["result"] for s in _steps(deps, rows[0]["instance_id"])] == [
        "branch",
        "branch",
        "exit",
    ]


def test_an_instance_runs_on_the_version_it_entered(deps: Deps, profiles: dict) -> None:
    v1 = journey(EMAIL_ONLY, holdout_share=0.0)
    v2 = journey(EMAIL_ONLY.replace("channel: email", "channel: web"), holdout_share=0.0)
    assert v1.version != v2.version
    assert journey_defs.sync_versions([v1], deps.ledger.engine) == {"mail": v1.version}
    people = _customers(profiles, 3)
    old = [jr.enter(v1, c, T0, {}, deps) for c in people]
    journey_defs.sync_versions([v2], deps.ledger.engine)  # edited while they are in it
    new = jr.enter(v2, "c-pre", T0, {}, deps)
    assert {r["version"] for r in old} == {v1.version} and new["version"] == v2.version
    journey_defs._VERSIONS.clear()  # a fresh process: definitions come from journey_versions
    assert jr.run_due(deps, T0) == 4
    assert {_steps(deps, r["instance_id"])[0]["result"] for r in old} <= {"sent", "skipped"}
    assert _steps(deps, new["instance_id"])[0]["result"] == "banner"
    assert journey_defs.definition(deps.ledger.engine, "mail", v1.version) == v1


def test_a_failing_step_is_retried_later_and_writes_nothing(deps: Deps) -> None:
    """A definition missing from journey_versions (the step cannot run): nothing is written,
    the instance is tried again a minute later, and the others still run."""
    from sqlalchemy import update

    from journeys.state import journey_instances

    j = journey(EMAIL_ONLY, holdout_share=0.0)
    bad = jr.enter(j, "c-post", T0, {}, deps)
    good = jr.enter(BASKET, "c-pre", T0, {}, deps)
    with deps.ledger.engine.begin() as conn:
        conn.execute(
            update(journey_instances)
            .where(journey_instances.c.instance_id == bad["instance_id"])
            .values(version="000000000000")
        )
    assert jr.run_due(deps, T0) == 2  # the other instance's banner and wait
    inst = _instance(deps, bad["instance_id"])
    assert inst["due_at"].replace(tzinfo=UTC) == T0 + jr.RETRY_AFTER and inst["step_seq"] == 0
    assert _steps(deps, bad["instance_id"]) == [] and _outbox(deps) == []
    assert len(_steps(deps, good["instance_id"])) == 2
