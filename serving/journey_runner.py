"""The journey runner: customers enter journeys, and due instances take their steps.

Every step commits in one transaction with what it changes: a message step's decision row
(status pending), its outbox message, the instance's new state and its ``journey_steps`` row
all go together (a transactional outbox), so a runner killed at any moment leaves either the
whole step or none of it; the next runner takes the step again and decides it afresh. A
message's id is a hash of (instance, step sequence) and ``journey_steps`` is keyed the same
way, so a step written once can never be written twice.

Several runners share the work. On PostgreSQL each claims one due instance with
``SELECT ... FOR UPDATE SKIP LOCKED`` inside the transaction that runs its step; on SQLite
the transaction starts with ``BEGIN IMMEDIATE`` (SQLite's one writer), so a step is claimed
and written under the same lock and two runners never run it twice. (``claimed_until`` of
``journey_instances`` is left for a leased claim outside the step's transaction: unused.)

What each step does is ``journeys.engine.advance``'s answer; the offer of a message and its
creative are planned by ``serving.decide.plan``, the /decide pipeline, restricted to the
journey's offers (``Scope``), with caps re-checked inside this transaction exactly as the
service's commit does (``Ledger.record_decisions_in``), so journey messages and /decide
decisions share every contact cap.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from journeys.definition import Journey, WaitForStep
from journeys.engine import State, Transition, advance
from journeys.state import LIVE, journey_instances, journey_steps, journey_waits
from offers.catalog import NO_OFFER
from record.assignment import StickyAssigner, assign_holdout
from record.ledger_pending import MAX_PLANS, PG_LOCK, customer_lock
from record.tables import DecisionRow, outbox, utc
from serving import policy
from serving.decide import DecideRequest, Scope, VisitContext, know, plan
from serving.deps import Deps
from serving.journey_defs import definition, sync_versions

log = logging.getLogger("nextbest.journeys")
MAX_HOPS = 50  # steps one instance takes in one transaction (a cycle always waits: see Journey)
RETRY_AFTER = timedelta(minutes=1)  # a step that failed is tried again this much later
MESSAGE_NS = uuid.UUID("6f1d4c1e-2b1a-4f53-9a57-5e1f0c0a7b11")  # message ids: (instance, seq)
_RUNNERS: dict[int, tuple[Deps, Deps]] = {}  # the runner's copy of a Deps (its own assigner)


class StepConflict(RuntimeError):
    """The instance changed under the step (another writer moved it): nothing is written."""


# --- transactions -----------------------------------------------------------------------------
@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction: on SQLite it takes the write lock first (``BEGIN IMMEDIATE``),
    so what it reads stays true until it commits, across processes; on PostgreSQL a plain
    transaction (rows are claimed with ``FOR UPDATE SKIP LOCKED``)."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")  # we say BEGIN ourselves
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")


def _lock_customer(conn: Connection, customer_id: str) -> None:
    """PostgreSQL: serialise writers of one customer's journeys (SQLite has one writer)."""
    if conn.dialect.name == "postgresql":
        conn.execute(PG_LOCK, {"keys": [customer_lock(f"journey:{customer_id}")]})


# --- entry ------------------------------------------------------------------------------------
def enter(
    journey: Journey,
    customer_id: str,
    ts: datetime,
    context: Mapping[str, Any],
    deps: Deps,
) -> dict[str, Any] | None:
    """Enter ``customer_id`` into ``journey`` at ``ts``: the new instance row, or None when
    they may not enter (a live instance of this journey, a cool-down since the last one ended,
    or the global holdout, which stays out of every journey and is recorded only as its draw
    in the assignments table, experiment ``global``).

    The journey's own holdout is drawn here, sticky through identity merges (assignments
    table, experiment ``journey.experiment``, share ``rules.holdout_share``): a holdout customer
    gets an instance with arm and status ``holdout`` and no steps, so their goal is tracked over
    the same window. A treated customer starts on the first step, due at once. A holdout
    instance counts as ended when it entered, for the cool-down."""
    engine = deps.ledger.engine
    sync_versions([journey], engine)
    ts = utc(ts)
    with engine.connect() as conn:
        if not _may_enter(conn, journey, customer_id, ts):
            return None
    rdeps = runner_deps(deps)
    arm = assign_holdout(
        customer_id,
        {},
        journey.experiment,
        rdeps.assigner,
        deps.graph,
        deps.settings,
        ts,
        experiment_share=journey.rules.holdout_share,
    )
    rdeps.assigner.flush()  # the draw is durable before the instance exists
    if arm is not None and arm.holdout == "global":
        return None
    holdout = arm is not None and arm.arm == "holdout"
    row = {
        "instance_id": uuid.uuid4().hex,
        "journey": journey.name,
        "version": journey.version,
        "customer_id": customer_id,
        "arm": "holdout" if holdout else "treatment",
        "path": None,
        "status": "holdout" if holdout else "active",
        "step_id": None if holdout else journey.first.id,
        "step_seq": 0,
        "due_at": None if holdout else ts,
        "entered_at": ts,
        "goal_at": None,
        "ended_at": None,
        "end_reason": None,
        "context": dict(context),
        "claimed_until": None,
    }
    try:
        with transaction(engine) as conn:
            _lock_customer(conn, customer_id)
            if not _may_enter(conn, journey, customer_id, ts):  # another entry won meanwhile
                return None
            conn.execute(insert(journey_instances), [row])
    except IntegrityError:  # the unique live index: another process entered them first
        return None
    return row


def _may_enter(conn: Connection, journey: Journey, customer_id: str, ts: datetime) -> bool:
    """No live instance, and the last one ended (a holdout one: entered) at least
    ``rules.reentry_after`` ago."""
    c = journey_instances.c
    rows = conn.execute(
        select(c.status, c.ended_at, c.entered_at).where(
            c.journey == journey.name, c.customer_id == customer_id
        )
    ).all()
    for status, ended_at, entered_at in rows:
        if status in LIVE:
            return False
        end = ended_at if ended_at is not None else entered_at
        if utc(end) + journey.rules.reentry_after > ts:
            return False
    return True


# --- running ----------------------------------------------------------------------------------
def runner_deps(deps: Deps) -> Deps:
    """The runner's view of ``deps``: the same parts, with a holdout assigner of its own that
    writes only when told (between transactions: on SQLite a write inside a step's transaction
    would wait for the lock that transaction holds); the other parts are shared."""
    hit = _RUNNERS.get(id(deps))
    if hit is not None and hit[0] is deps:
        return hit[1]
    mine = dataclasses.replace(deps)  # the same random source: draws are thread-safe
    mine.assigner = StickyAssigner(deps.ledger, flush_seconds=math.inf, flush_rows=sys.maxsize)
    _RUNNERS[id(deps)] = (deps, mine)
    return mine


def run_due(deps: Deps, now: datetime | None = None, limit: int = 1000) -> int:
    """Take due active instances one transaction each until none is due (at ``now``, else
    the clock) or ``limit`` steps were taken; returns the steps taken."""
    rdeps = runner_deps(deps)
    steps = claimed = 0
    while steps < limit and claimed < limit:
        at = utc(now) if now is not None else rdeps.clock()
        taken = run_one(rdeps, at)
        if taken is None:
            break
        steps, claimed = steps + taken, claimed + 1
    return steps


def run_instance(deps: Deps, instance_id: str, now: datetime | None = None) -> int | None:
    """Take one named instance's due steps now (the ingest path, right after an entry or a
    resolved wait, so the next message does not wait for a poll); None when it is not due
    or another runner holds it."""
    rdeps = runner_deps(deps)
    return run_one(rdeps, utc(now) if now is not None else rdeps.clock(), instance_id)


def _due(at: datetime, instance_id: str | None = None) -> Any:
    c = journey_instances.c
    q = select(journey_instances).where(c.status == "active", c.due_at <= at)
    if instance_id is not None:
        q = q.where(c.instance_id == instance_id)
    return q.order_by(c.due_at).limit(1)


def run_one(deps: Deps, at: datetime, instance_id: str | None = None) -> int | None:
    """Claim one due instance and take its steps until it waits, in one transaction; the
    steps taken, or None when nothing was due. ``deps``: a ``runner_deps`` view. Messages
    are planned at ``at`` (the clock, or a simulation's time), whatever the wall clock says."""
    assigner = deps.assigner
    deps = dataclasses.replace(deps, clock=lambda: at)
    deps.assigner = assigner
    engine = deps.ledger.engine
    if engine.dialect.name == "sqlite":  # a read first: no write lock when nothing is due
        with engine.connect() as conn:
            if conn.execute(_due(at, instance_id)).first() is None:
                return None
    held: list[DecisionRow] = []
    claimed: dict[str, Any] | None = None
    try:
        with transaction(engine) as conn:
            q = _due(at, instance_id)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            found = conn.execute(q).mappings().first()
            if found is None:
                return None
            claimed = dict(found)
            taken = _take_steps(conn, deps, claimed, at, held)
    except Exception:
        deps.ledger.pending.release(held, failed=held)
        if claimed is None:
            raise
        log.exception(
            "journey %s instance %s: step %s failed; retried in %s",
            claimed["journey"],
            claimed["instance_id"],
            claimed["step_id"],
            RETRY_AFTER,
        )
        _retry_later(engine, claimed, at)
        return 0
    deps.ledger.pending.release(held)
    deps.assigner.flush()  # draws made while planning, written outside the step's lock
    return taken


def _retry_later(engine: Engine, inst: Mapping[str, Any], at: datetime) -> None:
    c = journey_instances.c
    with transaction(engine) as conn:
        conn.execute(
            update(journey_instances)
            .where(
                c.instance_id == inst["instance_id"],
                c.step_seq == inst["step_seq"],
                c.step_id == inst["step_id"],
                c.status == "active",
            )
            .values(due_at=at + RETRY_AFTER)
        )


def _take_steps(
    conn: Connection,
    deps: Deps,
    inst: dict[str, Any],
    at: datetime,
    held: list[DecisionRow],
) -> int:
    """The instance's steps from its current one until it waits or ends, written on ``conn``."""
    journey = definition(conn, inst["journey"], inst["version"])
    salt = deps.settings.assignment_salt
    step_id, seq, path = inst["step_id"], inst["step_seq"], inst["path"]
    values: dict[str, Any] = {}
    taken = 0
    profile: tuple[dict[str, Any], dict[str, float]] | None = None
    for _ in range(MAX_HOPS):
        step = journey.step(step_id)
        waiting = False
        if isinstance(step, WaitForStep):
            expires = conn.execute(
                select(journey_waits.c.expires_at).where(
                    journey_waits.c.instance_id == inst["instance_id"],
                    journey_waits.c.event_type == step.event,
                )
            ).scalar_one_or_none()
            if expires is not None and utc(expires) > at:  # due early: wait on
                values["due_at"] = utc(expires)
                break
            waiting = expires is not None
        if profile is None and step.type == "split":
            profile = _profile(deps, inst["customer_id"])
        fields, scores = profile or ({}, {})
        state = State(inst["instance_id"], step_id, at, waiting, path, fields, scores)
        t = advance(journey, state, salt)
        if t.kind == "postpone":
            values["due_at"] = t.due_at
            break
        record: dict[str, Any] = {"result": t.result, "detail": t.detail}
        if t.kind == "send":
            record = _send(conn, deps, journey, inst, t, seq, at, held)
        elif t.kind == "banner":
            record["channel"] = t.channels[0]
        elif t.kind == "wait_for":
            _register_wait(conn, inst, seq, t)
        elif t.kind == "timeout":
            conn.execute(
                delete(journey_waits).where(
                    journey_waits.c.instance_id == inst["instance_id"],
                    journey_waits.c.event_type == step.event,
                )
            )
        conn.execute(
            insert(journey_steps),
            [
                {
                    "instance_id": inst["instance_id"],
                    "seq": seq,
                    "step_id": step_id,
                    "ts": at,
                    "channel": None,
                    "decision_id": None,
                    "message_id": None,
                    **record,
                    "detail": (record.get("detail") or "")[:200] or None,
                }
            ],
        )
        seq, taken = seq + 1, taken + 1
        if t.path is not None:
            path = values["path"] = t.path
        if t.completes:
            values |= {
                "status": "completed",
                "due_at": None,
                "ended_at": at,
                "end_reason": f"completed at step {step_id}",
            }
            break
        step_id = values["step_id"] = t.goto
        values["due_at"] = t.due_at
        if t.due_at is None or t.due_at > at:
            break
    values["step_seq"] = seq
    c = journey_instances.c
    moved = conn.execute(
        update(journey_instances)
        .where(
            c.instance_id == inst["instance_id"],
            c.step_seq == inst["step_seq"],
            c.status == "active",
        )
        .values(**values)
    ).rowcount
    if moved != 1:
        raise StepConflict(f"instance {inst['instance_id']} changed while its step ran")
    return taken


def _profile(deps: Deps, customer_id: str) -> tuple[dict[str, Any], dict[str, float]]:
    """Profile fields and scores for a split (no features: every rule fails, the safe side)."""
    known = know(DecideRequest(customer_id=customer_id, channel="web"), deps)
    fields = policy.profile_fields(known.features)
    scores: dict[str, float] = {}
    if deps.models is not None and known.features:
        try:
            scores["churn_risk"] = float(deps.models.churn_risk(known.features))
        except Exception:  # noqa: BLE001 - no score: a score rule does not hold
            log.warning("churn score unavailable for a split", exc_info=True)
    return fields, scores


def _register_wait(conn: Connection, inst: Mapping[str, Any], seq: int, t: Transition) -> None:
    """The wait the ingest path resolves: the event, and the message of step ``of`` (its
    latest send in this instance), so an open of another e-mail does not count."""
    assert t.wait is not None
    message_id = decision_id = None
    if t.wait.of is not None:
        s = journey_steps.c
        sent = conn.execute(
            select(s.message_id, s.decision_id)
            .where(s.instance_id == inst["instance_id"], s.step_id == t.wait.of, s.seq < seq)
            .order_by(s.seq.desc())
            .limit(1)
        ).first()
        if sent is not None:
            message_id, decision_id = sent
    conn.execute(
        insert(journey_waits),
        [
            {
                "instance_id": inst["instance_id"],
                "customer_id": inst["customer_id"],
                "event_type": t.wait.event,
                "message_id": message_id,
                "decision_id": decision_id,
                "expires_at": t.wait.expires_at,
            }
        ],
    )


def message_id(instance_id: str, seq: int) -> str:
    """A message's id: one per (instance, step sequence), so a retried step cannot send twice."""
    return uuid.uuid5(MESSAGE_NS, f"{instance_id}:{seq}").hex


def _send(
    conn: Connection,
    deps: Deps,
    journey: Journey,
    inst: Mapping[str, Any],
    t: Transition,
    seq: int,
    at: datetime,
    held: list[DecisionRow],
) -> dict[str, Any]:
    """Plan the step's offer on each candidate channel through the /decide pipeline (its
    offers only), keep the channel whose drawn offer has the most expected incremental value,
    and write its decision (pending) and outbox message on ``conn``; the journey_steps fields
    (sent, or skipped with the reasons)."""
    cid = inst["customer_id"]
    scope = Scope(journey.experiment, frozenset(journey.offers), journey.rules.holdout_share)
    where = f"{journey.name}:{t.step_id}"
    basket = inst["context"].get("basket") if isinstance(inst["context"], dict) else None
    context = VisitContext(
        journey=where,
        basket=[str(b) for b in basket][:100] if isinstance(basket, list) else [],
    )
    first = DecideRequest(customer_id=cid, channel=t.channels[0], context=context)  # type: ignore[arg-type]
    known = know(first, deps)
    why: dict[str, str] = {}

    def plan_on(channel: str) -> tuple[Any, DecisionRow] | None:
        request = DecideRequest(customer_id=cid, channel=channel, context=context)  # type: ignore[arg-type]
        response, row = plan(request, deps, known, scope)
        if row.arm == "holdout":
            why[channel] = "holdout"
        elif row.offer_id is None or row.offer_id == NO_OFFER:
            dropped = row.scores.get("dropped", {})
            real = [f"{o}: {r}" for o, r in dropped.items() if o != NO_OFFER]
            why[channel] = "no offer" + (f" ({'; '.join(real)})" if real else "")
        else:
            return response, row
        return None

    best: tuple[float, str, Any, DecisionRow] | None = None
    for channel in t.channels:
        got = plan_on(channel)
        if got is not None:
            value = float(got[1].scores.get("value", {}).get(got[1].offer_id, 0.0))
            if best is None or value > best[0]:
                best = (value, channel, *got)
    for _ in range(MAX_PLANS):
        if best is None:
            detail = "; ".join(f"{c}: {r}" for c, r in why.items())
            return {"result": "skipped", "detail": detail}
        _, channel, response, row = best
        row.status = "pending"  # not shown until a sender sends it
        deps.ledger.pending.hold(row)
        held.append(row)
        if not deps.ledger.record_decisions_in(conn, [row]):
            break
        deps.ledger.pending.release([row], failed=[row])  # stale: another writer showed them
        held.remove(row)
        got = plan_on(channel)
        best = None if got is None else (0.0, channel, *got)
    else:
        raise RuntimeError(f"customer {cid}: history kept changing over {MAX_PLANS} plans")
    mid = message_id(inst["instance_id"], seq)
    payload = response.model_dump(mode="json") | {
        "journey": journey.name,
        "version": journey.version,
        "step": t.step_id,
        "instance_id": inst["instance_id"],
    }
    conn.execute(
        insert(outbox),
        [
            {
                "message_id": mid,
                "created_at": at,
                "customer_id": cid,
                "channel": channel,
                "decision_id": row.decision_id,
                "offer_id": row.offer_id,
                "trigger": f"journey:{where}"[:96],
                "payload": payload,
                "status": "pending",
            }
        ],
    )
    return {
        "result": "sent",
        "channel": channel,
        "decision_id": row.decision_id,
        "message_id": mid,
        "detail": f"{row.offer_id} (p={row.propensity:.3f})" if row.propensity else row.offer_id,
    }


# --- reads ------------------------------------------------------------------------------------
def instances(engine: Engine, customer_id: str | None = None) -> list[dict[str, Any]]:
    """Instance rows (of one customer), newest first: tests, the CLI and the agent's view."""
    c = journey_instances.c
    q = select(journey_instances).order_by(c.entered_at.desc())
    if customer_id is not None:
        q = q.where(c.customer_id == customer_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def due_count(engine: Engine, at: datetime) -> int:
    c = journey_instances.c
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).where(and_(c.status == "active", c.due_at <= at))
        ).scalar_one()
