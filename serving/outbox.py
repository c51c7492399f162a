"""Act on intent: live baskets, abandoned-basket triggers, and the outbox that senders read.

A basket left on the web or app without checkout for ``abandon_after_minutes`` becomes an
outbound decision (e-mail, else SMS) through the same pipeline as any visit, so consent, caps
and holdouts hold; a purchase anywhere, under any of the person's identities, cancels it.
Each message's decision carries its delivery (``record.tables.DecisionStatus``): pending
when queued, sent when a sender claims it, delivered on its receipt (``POST /outcome`` of type
``delivered``), cancelled with the message, in the same transaction.
A ``purchase_intent`` recorded by a store clerk or an agent joins the live basket, so every
channel sees it; it is the channel's own follow-up, so it triggers no abandoned-basket message.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update

from offers.catalog import NO_OFFER
from record.applied import claim
from record.ledger import mark_status
from record.tables import baskets, decisions, insert_ignore, now, outbox, utc
from serving.decide import DecideRequest, VisitContext, decide
from serving.deps import Deps

log = logging.getLogger("nextbest.outbox")
BASKET_CHANNELS = ("web", "app")
OUTBOUND_ORDER = ("email", "sms")
JOURNEY = "abandoned_basket"  # the journey that takes this trigger over when it is active


def track_event(event: Any, customer_id: str, deps: Deps) -> dict[str, int]:
    """Keep the live basket of web/app sessions; a purchase or checkout anywhere closes it and
    cancels the person's pending abandoned-basket messages. Once per event: its mark commits
    with the change (``record.applied``), so a retried event changes nothing again."""
    engine, ts = deps.ledger.engine, utc(event.ts)
    if event.event_type in ("checkout", "purchase"):
        with engine.begin() as conn:
            if not claim(conn, event.event_id, "basket", customer_id, utc(deps.clock())):
                return {}
            closed = conn.execute(
                update(baskets)
                .where(baskets.c.customer_id == customer_id, baskets.c.status != "checked_out")
                .values(status="checked_out", updated_at=ts)
            ).rowcount
            # the trigger's own messages; a journey's are cancelled by its exit rules
            waiting = (
                outbox.c.customer_id == customer_id,
                outbox.c.status == "pending",
                outbox.c.trigger == JOURNEY,
            )
            ids = list(conn.execute(select(outbox.c.decision_id).where(*waiting)).scalars())
            cancelled = conn.execute(update(outbox).where(*waiting).values(status="cancelled"))
            # in the same transaction: a cancelled message's decision is never credited
            mark_status(conn, ids, "cancelled")
        return {"baskets_closed": closed, "messages_cancelled": cancelled.rowcount}
    intent = event.event_type == "purchase_intent"  # recorded by a clerk, on any channel
    if not intent and (
        event.event_type not in ("basket_add", "basket_remove")
        or event.channel not in BASKET_CHANNELS
    ):
        return {}
    with engine.begin() as conn:
        if not claim(conn, event.event_id, "basket", customer_id, utc(deps.clock())):
            return {}
        # the first event of a customer creates an empty basket; then its row is locked, so two
        # workers applying events of one customer add to each other's items, never overwrite
        empty = {"customer_id": customer_id, "channel": event.channel, "updated_at": ts,
                 "products": [], "value": 0.0, "status": "checked_out"}  # fmt: skip
        conn.execute(insert_ignore(conn, baskets), [empty])
        row = conn.execute(
            select(baskets).where(baskets.c.customer_id == customer_id).with_for_update()
        ).one()
        items = list(row.products) if row.status == "open" else []
        value = float(row.value) if row.status == "open" else 0.0
        sign = 1 if event.event_type in ("basket_add", "purchase_intent") else -1
        if event.product_id:
            if sign > 0:
                items.append(event.product_id)
            elif event.product_id in items:
                items.remove(event.product_id)
        value = max(0.0, value + sign * float(event.value or 0.0))
        fields = {"channel": event.channel, "updated_at": ts, "products": items, "value": value}
        status = "open" if items or value > 0 else "checked_out"
        conn.execute(
            update(baskets)
            .where(baskets.c.customer_id == customer_id)
            .values(status=status, **fields)
        )
    return {"basket_items": len(items)}


def live_basket(customer_id: str, deps: Deps) -> dict[str, Any] | None:
    with deps.ledger.engine.connect() as conn:
        row = (
            conn.execute(select(baskets).where(baskets.c.customer_id == customer_id))
            .mappings()
            .first()
        )
    if row is None or row["status"] != "open":
        return None
    return {**dict(row), "updated_at": utc(row["updated_at"]).isoformat()}


def _claim(customer_id: str, deps: Deps) -> bool:
    """Atomically take an open basket, so two workers scanning at once trigger it once."""
    with deps.ledger.engine.begin() as conn:
        return (
            conn.execute(
                update(baskets)
                .where(baskets.c.customer_id == customer_id, baskets.c.status == "open")
                .values(status="triggered")
            ).rowcount
            == 1
        )


def scan_abandoned(deps: Deps, at: datetime | None = None) -> list[dict[str, Any]]:
    """Turn every basket idle for ``abandon_after_minutes`` into at most one outbound decision
    (e-mail first, SMS when e-mail has no consent or is capped). Returns what was queued.
    Nothing, when the ``abandoned_basket`` journey is active: its intent trigger enters the
    basket's customer into the journey instead (``serving.journey_intents``)."""
    from serving.journey_defs import active

    if JOURNEY in active(deps.settings):
        return []
    at = at or now()
    cutoff = at - timedelta(minutes=deps.settings.abandon_after_minutes)
    with deps.ledger.engine.connect() as conn:
        due = conn.execute(
            select(baskets.c.customer_id, baskets.c.products).where(
                baskets.c.status == "open",
                baskets.c.channel.in_(BASKET_CHANNELS),
                baskets.c.updated_at <= cutoff,
            )
        ).all()
    queued = []
    for customer_id, items in due:
        if not _claim(customer_id, deps):
            continue
        context = VisitContext(intent="abandoned_basket", basket=list(items)[:100])
        for channel in OUTBOUND_ORDER:
            request = DecideRequest(customer_id=customer_id, channel=channel, context=context)
            decision = decide(request, deps)
            if decision.arm == "holdout":
                break  # the holdout gets no message, on any channel, but keeps its ledger row
            real = [o for o in decision.offers if o.offer_id != NO_OFFER]
            if real:
                queued.append(_enqueue(customer_id, channel, decision, at, deps))
                break
    return queued


def _enqueue(
    customer_id: str, channel: str, decision: Any, at: datetime, deps: Deps
) -> dict[str, Any]:
    row = {
        "message_id": uuid.uuid4().hex,
        "created_at": at,
        "customer_id": customer_id,
        "channel": channel,
        "decision_id": decision.decision_id,
        "offer_id": decision.offers[0].offer_id,
        "trigger": "abandoned_basket",
        "payload": decision.model_dump(mode="json"),
        "status": "pending",
    }
    with deps.ledger.engine.begin() as conn:
        conn.execute(insert(outbox), [row])
        mark_status(conn, [decision.decision_id], "pending")  # not shown until it is sent
    return row


def pending(deps: Deps, channel: str, limit: int = 100, claim: bool = True) -> list[dict[str, Any]]:
    """Messages waiting for one channel's sender; claimed (marked sent) unless peeking."""
    with deps.ledger.engine.begin() as conn:
        rows = (
            conn.execute(
                select(outbox)
                .where(outbox.c.channel == channel, outbox.c.status == "pending")
                .order_by(outbox.c.created_at)
                .limit(limit)
            )
            .mappings()
            .all()
        )
        ids = [r["message_id"] for r in rows]
        if claim and ids:
            conn.execute(
                update(outbox)
                .where(outbox.c.message_id.in_(ids), outbox.c.status == "pending")
                .values(status="sent")
            )
            mark_status(conn, [r["decision_id"] for r in rows], "sent")
    return [{**dict(r), "created_at": utc(r["created_at"]).isoformat()} for r in rows]


def delivered(decision_id: str, deps: Deps) -> bool:
    """A sender's delivery receipt: the decision and its message are marked delivered (a
    message still pending was evidently sent). False when it already was."""
    with deps.ledger.engine.begin() as conn:
        conn.execute(
            update(outbox)
            .where(outbox.c.decision_id == decision_id, outbox.c.status.in_(("pending", "sent")))
            .values(status="delivered")
        )
        q = (
            update(decisions)
            .where(
                decisions.c.decision_id == decision_id,
                decisions.c.status.is_distinct_from("delivered"),
            )
            .values(status="delivered")
        )
        return conn.execute(q).rowcount == 1
