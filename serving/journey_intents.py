"""Act-on-intent entries: ``count`` matching events within ``within``, and ``idle``: a pending
entry due that long after the last matching event, which an ``unless`` event cancels (a basket
not checked out for 60 minutes).

Two small tables of its own (``journeys.intent_state``): the recent matching events per
customer and journey, pruned to the window on every write, and the pending entries, which
``enter_due_intents`` (called by the runner's loop and the service's scan) enters once due.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from journeys.definition import IntentTrigger, Journey
from journeys.intent_state import journey_intent_events, journey_pending_entries
from record.tables import utc
from serving import outbox
from serving.deps import Deps
from serving.journey_defs import active
from serving.journey_events import take_next_step
from serving.journey_runner import enter, run_due
from serving.journey_schedule import maybe_sweep

log = logging.getLogger("nextbest.journeys")


def _matches(trigger: IntentTrigger, event: Any) -> bool:
    return event.event_type == trigger.event and (
        not trigger.channels or event.channel in trigger.channels
    )


def entry_context(event: Any) -> dict[str, Any]:
    """What an instance remembers of the event it entered on (``product: entry`` reads it;
    the runner passes ``basket`` to its messages' decisions)."""
    return {"event": event.event_type, "event_id": event.event_id,
            "product_id": event.product_id, "channel": event.channel,
            "ts": utc(event.ts).isoformat(),
            "basket": [event.product_id] if event.product_id else []}  # fmt: skip


def track(event: Any, customer_id: str, journeys: dict[str, Journey], deps: Deps) -> dict:
    """Count, queue or cancel intent entries for one event; enter at once where due."""
    ts, out = utc(event.ts), {"journeys_entered": 0, "entries_pending": 0, "entries_cancelled": 0}
    for j in journeys.values():
        t = j.entry
        if not isinstance(t, IntentTrigger):
            continue
        pending = and_(
            journey_pending_entries.c.journey == j.name,
            journey_pending_entries.c.customer_id == customer_id,
        )
        if event.event_type in t.unless:
            with deps.ledger.engine.begin() as conn:
                gone = conn.execute(delete(journey_pending_entries).where(pending)).rowcount
            out["entries_cancelled"] += gone
            continue
        if not _matches(t, event) or not _counted(j, t, event, customer_id, ts, deps):
            continue
        context = entry_context(event)
        if t.idle is None:
            entered = _enter(j, customer_id, ts, context, deps)
            if entered is not None and entered["status"] == "active":
                take_next_step(entered["instance_id"], deps)  # its first message: now
            out["journeys_entered"] += entered is not None
            continue
        with deps.ledger.engine.begin() as conn:  # a later event pushes the entry back
            conn.execute(delete(journey_pending_entries).where(pending))
            row = {"journey": j.name, "customer_id": customer_id, "due_at": ts + t.idle,
                   "context": context}  # fmt: skip
            conn.execute(insert(journey_pending_entries), [row])
        out["entries_pending"] += 1
    return {k: v for k, v in out.items() if v}


def _counted(
    j: Journey, t: IntentTrigger, event: Any, customer_id: str, ts: datetime, deps: Deps
) -> bool:
    """Whether this event completes ``count`` within ``within`` (then the count starts over)."""
    if t.count <= 1:
        return True
    c = journey_intent_events.c
    mine = and_(c.journey == j.name, c.customer_id == customer_id)
    with deps.ledger.engine.begin() as conn:
        conn.execute(delete(journey_intent_events).where(mine, c.ts < ts - t.within))
        try:
            with conn.begin_nested():
                row = {"journey": j.name, "customer_id": customer_id,
                       "event_id": event.event_id, "ts": ts}  # fmt: skip
                conn.execute(insert(journey_intent_events), [row])
        except IntegrityError:
            return False  # the same event again: counted once
        n = conn.execute(
            select(func.count()).select_from(journey_intent_events).where(mine, c.ts <= ts)
        ).scalar_one()
        if n < t.count:
            return False
        conn.execute(delete(journey_intent_events).where(mine))
    return True


def _enter(j: Journey, customer_id: str, ts: datetime, context: dict, deps: Deps) -> Any:
    """Enter through the runner (its rules: one live instance, cool-down, holdout draw)."""
    return enter(j, customer_id, ts, context, deps)


def run_round(deps: Deps, now: datetime | None = None, limit: int = 500) -> tuple[int, int]:
    """One round of a journey runner, as the service's loop and ``nextbest journeys run`` take
    them: due intent entries enter, scheduled triggers are swept when a sweep is due (every
    ``journey_schedule_minutes``, ``serving.journey_schedule``), then due steps run. Returns
    (entered, steps)."""
    at = now or deps.clock()
    entered = enter_due_intents(deps, at, limit)
    entered += maybe_sweep(deps, at)
    return entered, run_due(deps, now, limit)


def enter_due_intents(deps: Deps, now: datetime, limit: int = 500) -> int:
    """Enter every pending entry due by ``now`` (at its due time); the number entered. Each is
    deleted after its entry, only if no later event moved it meanwhile: a crash in between
    retries the entry, which the one-live-instance rule makes harmless."""
    p = journey_pending_entries.c
    with deps.ledger.engine.connect() as conn:
        due = conn.execute(
            select(p.journey, p.customer_id, p.due_at, p.context)
            .where(p.due_at <= now)
            .order_by(p.due_at)
            .limit(limit)
        ).all()
    journeys, entered = active(deps.settings), 0
    for name, cid, due_at, context in due:
        j = journeys.get(name)
        if j is not None:
            live = outbox.live_basket(cid, deps)  # the basket as it is now, if still open
            context = {**context, "basket": live["products"][:100]} if live else dict(context)
            try:
                entered += _enter(j, cid, utc(due_at), context, deps) is not None
            except Exception:  # noqa: BLE001 - one bad entry must not stop the others
                log.exception("entering %s for %s failed", name, cid)
                continue
        with deps.ledger.engine.begin() as conn:
            conn.execute(
                delete(journey_pending_entries).where(
                    p.journey == name, p.customer_id == cid, p.due_at == due_at
                )
            )
    return entered
