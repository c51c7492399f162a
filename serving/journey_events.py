"""What events do to running journeys, on the ingest path and ``/outcome``: exits interrupt at
once, goals are marked, waits are resolved, intents make customers enter.

Every change to one instance commits in one transaction with what it implies: an exit ends
the instance, deletes its waits and cancels its unsent messages (and their decisions); a
resolved wait deletes the instance's waits, logs the step and makes the instance due now on
its ``on_event`` step, for the runner to execute. Events find instances through the
customer's index (``journey_instances`` and ``journey_waits`` by customer), never by polling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, or_, select, update

from journeys.definition import ExitRule, Goal, WaitForStep
from journeys.state import LIVE, journey_instances, journey_steps, journey_waits
from record.ledger import mark_status
from record.tables import outbox, utc
from serving.deps import Deps
from serving.journey_defs import definition
from serving.journey_runner import run_instance

log = logging.getLogger("nextbest.journeys")
# A sender's outcome about a message, as the event it stands for (by the message's channel)
OUTCOME_EVENTS = {("open", "email"): "email_open", ("click", "email"): "email_click",
                  ("click", "sms"): "sms_click"}  # fmt: skip


def product_matches(want: str, product_id: str | None, context: dict[str, Any], deps: Deps) -> bool:
    """A goal's or exit's product: ``any``; ``entry`` (the entry event's product); an offer id
    (that offer's product, or the offer id itself as the event's product)."""
    if want == "any":
        return True
    if product_id is None:
        return False
    if want == "entry":
        return product_id == context.get("product_id")
    offer = next((o for o in deps.offers() if o.id == want), None)
    return product_id == want or (offer is not None and product_id == offer.product_id)


def _hits(rule: Goal | ExitRule, event: Any, context: dict[str, Any], deps: Deps) -> bool:
    return rule.event == event.event_type and product_matches(
        rule.product, event.product_id, context, deps
    )


@dataclass(frozen=True)
class Happened:
    """An event that did not come through ``/events`` (a purchase reported to ``/outcome``)."""

    event_type: str
    ts: datetime
    channel: str
    product_id: str | None = None
    event_id: str = ""
    campaign_id: str | None = None


def on_event(event: Any, customer_id: str, deps: Deps) -> dict[str, Any]:
    """Exits and goals, then waits, for one event of a resolved customer (intent entries are
    ``serving.journey_intents``'). Returns what changed (counts) for the ingest's answer."""
    result: dict[str, Any] = {}
    ts = utc(event.ts)
    with deps.ledger.engine.begin() as conn:
        ended, goals = _exits_and_goals(conn, event, customer_id, ts, deps)
    if ended:
        result["journeys_ended"] = ended
    if goals:
        result["journey_goals"] = goals
    ref = getattr(event, "campaign_id", None)
    resolved = resolve_waits(customer_id, event.event_type, ref, ts, event.channel, deps)
    if resolved:
        result["journey_waits_resolved"] = resolved
    return result


def _exits_and_goals(
    conn: Connection, event: Any, cid: str, ts: datetime, deps: Deps
) -> tuple[int, int]:
    ji = journey_instances.c
    rows = conn.execute(
        select(
            ji.instance_id,
            ji.journey,
            ji.version,
            ji.status,
            ji.entered_at,
            ji.goal_at,
            ji.context,
        ).where(ji.customer_id == cid, or_(ji.status.in_((*LIVE, "holdout")), ji.goal_at.is_(None)))
    ).all()
    ended = goals = 0
    for iid, name, version, status, entered, goal_at, context in rows:
        if ts < utc(entered):
            continue  # an event from before the customer entered
        j = definition(conn, name, version)
        context = context or {}
        goal = goal_at is None and ts <= utc(entered) + j.goal.within
        goal = goal and _hits(j.goal, event, context, deps)
        if goal:
            conn.execute(update(journey_instances).where(ji.instance_id == iid).values(goal_at=ts))
            goals += 1
        exit_rule = next((r for r in j.exit if _hits(r, event, context, deps)), None)
        reason = f"goal: {event.event_type}" if goal and j.rules.exit_on_goal else None
        reason = reason or (f"exit: {exit_rule.event}" if exit_rule is not None else None)
        if reason is None:
            continue
        if status in LIVE:  # a holdout instance is left as entered (the runner's cool-down)
            done = "goal" if reason.startswith("goal") else "exited"
            ended += end_instance(conn, iid, done, reason, ts)
    return ended, goals


def end_instance(conn: Connection, instance_id: str, status: str, reason: str, ts: datetime) -> int:
    """End a live instance in the caller's transaction: its waits deleted, its unsent messages
    and their decisions cancelled; its banners are no longer shown (they show for active
    instances only). 1 if it was live, else 0 (another writer ended it first)."""
    ji = journey_instances.c
    q = update(journey_instances).where(ji.instance_id == instance_id, ji.status.in_(LIVE))
    values = {"status": status, "ended_at": ts, "end_reason": reason[:200], "due_at": None,
              "claimed_until": None}  # fmt: skip
    if conn.execute(q.values(**values)).rowcount != 1:
        return 0  # first, so a runner mid-step on it (PostgreSQL: its row lock) goes first
    conn.execute(delete(journey_waits).where(journey_waits.c.instance_id == instance_id))
    sent = select(journey_steps.c.message_id).where(
        journey_steps.c.instance_id == instance_id, journey_steps.c.message_id.is_not(None)
    )
    waiting = outbox.c.message_id.in_(sent), outbox.c.status == "pending"
    ids = list(conn.execute(select(outbox.c.decision_id).where(*waiting)).scalars())
    if ids:
        conn.execute(update(outbox).where(*waiting).values(status="cancelled"))
        mark_status(conn, ids, "cancelled")  # a cancelled message's decision is never credited
    log_step(conn, instance_id, None, ts, "exit", detail=reason)
    return 1


def log_step(
    conn: Connection,
    instance_id: str,
    step_id: str | None,
    ts: datetime,
    result: str,
    **fields: Any,
) -> int:
    """Append one row to the instance's step log at its ``step_seq`` and advance that, as the
    runner does: a runner step committing after this finds the instance moved and writes
    nothing (``step_seq`` is its optimistic check). ``step_id`` None: the step it is on."""
    ji = journey_instances.c
    on, seq = conn.execute(
        select(ji.step_id, ji.step_seq).where(ji.instance_id == instance_id)
    ).one()
    row = {"instance_id": instance_id, "seq": seq, "step_id": step_id or on or "", "ts": ts,
           "result": result, "channel": None, "decision_id": None, "message_id": None,
           **fields}  # fmt: skip
    conn.execute(journey_steps.insert(), [row])
    q = update(journey_instances).where(ji.instance_id == instance_id, ji.step_seq == seq)
    conn.execute(q.values(step_seq=seq + 1))
    return seq


def resolve_waits(
    customer_id: str,
    event_type: str,
    ref: str | None,
    ts: datetime,
    channel: str | None,
    deps: Deps,
) -> int:
    """Instances of this customer waiting for ``event_type`` move on now: a wait that names a
    message is resolved only by an event about it (``ref``: its decision or message id; an
    e-mail open reported by ``/outcome``, or an event whose ``campaign_id`` names it).
    The number of instances moved."""
    jw = journey_waits.c
    with deps.ledger.engine.connect() as conn:
        waits = conn.execute(
            select(jw.instance_id, jw.message_id, jw.decision_id, jw.expires_at).where(
                jw.customer_id == customer_id, jw.event_type == event_type
            )
        ).all()
    moved = 0
    for iid, message_id, decision_id, expires in waits:
        named = {m for m in (message_id, decision_id) if m}
        if (named and ref not in named) or ts > utc(expires):
            continue  # about another message, or it timed out first
        with deps.ledger.engine.begin() as conn:
            went = _move_on(conn, iid, event_type, decision_id, channel, deps)
        if went:
            moved += 1
            take_next_step(iid, deps)
    return moved


def take_next_step(instance_id: str, deps: Deps) -> None:
    """The step an event made due, taken now rather than at the runner's next poll (the
    e-mail after an open arrives with the open). A failure is the runner's to retry."""
    try:
        run_instance(deps, instance_id)
    except Exception:  # noqa: BLE001 - the instance stays due; a runner takes it
        log.exception("journey instance %s: next step left to the runner", instance_id)


def _move_on(
    conn: Connection,
    instance_id: str,
    event_type: str,
    decision_id: str | None,
    channel: str | None,
    deps: Deps,
) -> int:
    """Resolve one instance's wait_for in the caller's transaction: waits deleted, the step
    logged, the instance on its ``on_event`` step and due now (a paused one stays paused)."""
    ji = journey_instances.c
    row = conn.execute(
        select(ji.journey, ji.version, ji.step_id).where(
            ji.instance_id == instance_id, ji.status.in_(LIVE)
        )
    ).first()
    if row is None:
        return 0
    j = definition(conn, row.journey, row.version)
    step = j.step(row.step_id) if row.step_id else None
    if not isinstance(step, WaitForStep) or step.event != event_type:
        return 0  # no longer on that wait (the runner timed it out meanwhile)
    gone = conn.execute(delete(journey_waits).where(journey_waits.c.instance_id == instance_id))
    if gone.rowcount == 0:
        return 0  # another writer resolved it first
    log_step(conn, instance_id, step.id, utc(deps.clock()), "event", channel=channel,
             decision_id=decision_id, detail=event_type)  # fmt: skip
    conn.execute(
        update(journey_instances)
        .where(ji.instance_id == instance_id, ji.step_id == step.id)
        .values(step_id=step.on_event, due_at=utc(deps.clock()), claimed_until=None)
    )
    return 1


def on_outcome(outcome_type: str, decision: Any, ts: datetime, deps: Deps) -> int:
    """A sender's open or click of a message resolves the waits its event would."""
    event_type = OUTCOME_EVENTS.get((outcome_type, decision.channel))
    if event_type is None or decision.customer_id is None:
        return 0
    return resolve_waits(
        decision.customer_id, event_type, decision.decision_id, ts, decision.channel, deps
    )
