"""One customer's recent activity across channels: live events, decisions shown, outcomes.

What an agent or a clerk needs to continue a conversation ("you looked at the phone on the
website an hour ago, and we sent you an e-mail about it"), newest first, from three indexed
reads: the live event log (``features.ingest.recent_events``) and the ledger's decisions and
outcomes of the person (and the ids merged into it). The batch history stays out: it is what
the profile's features summarise, and reading it per page would scan a year of events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import select

from features.ingest import recent_events
from record.tables import decisions, outcomes, utc
from serving.deps import Deps


class Activity(BaseModel):
    ts: datetime
    kind: Literal["event", "decision", "outcome"]
    channel: str | None
    what: str
    detail: str = ""


def _events(ids: list[str], deps: Deps, limit: int) -> list[Activity]:
    out = []
    for e in recent_events(deps.settings, ids, limit):
        detail = " ".join(
            str(x)
            for x in (
                e["product_id"],
                f"{e['value']:g}" if e["value"] is not None else None,
                e["consent_channel"] and f"{e['consent_channel']}={bool(e['consent_value'])}",
                e["campaign_id"],
            )
            if x
        )
        at = datetime.fromisoformat(e["ts"])
        out.append(Activity(ts=utc(at), kind="event", channel=e["channel"],
                            what=e["event_type"], detail=detail))  # fmt: skip
    return out


def _theirs(col: Any, ids: list[str]) -> Any:
    """``col`` is one of ``ids``: an equality for one id, so the (customer_id, ts) index
    yields the latest rows in order instead of sorting all of a year's."""
    return col == ids[0] if len(ids) == 1 else col.in_(ids)


def _ledger(ids: list[str], deps: Deps, limit: int) -> list[Activity]:
    d, o = decisions.c, outcomes.c
    with deps.ledger.engine.connect() as conn:
        shown = conn.execute(
            select(d.ts, d.channel, d.offer_id, d.arm, d.status, d.experiment)
            .where(_theirs(d.customer_id, ids))
            .order_by(d.ts.desc())
            .limit(limit)
        ).all()
        answered = conn.execute(
            select(o.ts, o.type, o.value, o.offer_id, o.decision_id)
            .where(_theirs(o.customer_id, ids))
            .order_by(o.ts.desc())
            .limit(limit)
        ).all()
    out = [
        Activity(ts=utc(r.ts), kind="decision", channel=r.channel,
                 what=f"offered {r.offer_id}" if r.offer_id else "no offer",
                 detail=f"{r.experiment}/{r.arm}" + (f" {r.status}" if r.status else ""))
        for r in shown
    ]  # fmt: skip
    out += [
        Activity(ts=utc(r.ts), kind="outcome", channel=None, what=r.type,
                 detail=" ".join(x for x in (r.offer_id, f"{r.value:g}") if x))
        for r in answered
    ]  # fmt: skip
    return out


def person_ids(customer_id: str, deps: Deps) -> list[str]:
    """The id and every id merged into it: their events and decisions are this person's."""
    if deps.graph is None:
        return [customer_id]
    from features import graph_store as gs

    with deps.graph.engine.connect() as conn:
        merged = conn.execute(
            select(gs.merges.c.from_id).where(gs.merges.c.into_id == customer_id)
        ).scalars()
        return [customer_id, *dict.fromkeys(merged)]


def recent(ids: list[str], deps: Deps, limit: int = 20) -> list[Activity]:
    """The ``limit`` latest things that happened to these customer ids, newest first."""
    items = _events(ids, deps, limit) + _ledger(ids, deps, limit)
    return sorted(items, key=lambda a: a.ts, reverse=True)[:limit]


def as_json(items: list[Activity]) -> list[dict[str, Any]]:
    return [a.model_dump(mode="json") for a in items]
