"""The other endpoints as plain functions: outcomes, events, the agent's profile view, erasure.

Semantic input errors are raised as pydantic ``ValidationError`` naming the field, so HTTP
callers get the same 400 shape as for a malformed body.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from sqlalchemy import select

from experiments.ledger import OutcomeRow, decisions, now, utc
from serving import outbox
from serving.decide import DecideRequest, DecideResponse, Known, plan, read_features
from serving.deps import Deps
from serving.schemas import ID_FIELDS
from serving.writer import commit

Id = Field(None, min_length=1, max_length=256)


def field_error(field: str, reason: str, value: Any, title: str = "request") -> ValidationError:
    """A ValidationError for one field: the 400 that names it, like a malformed body's."""
    detail = InitErrorDetails(
        type=PydanticCustomError("invalid", reason), loc=(field,), input=value
    )
    return ValidationError.from_exception_data(title, [detail])


class OutcomeRequest(BaseModel):
    """What happened after a decision; a retry with the same key counts once."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    idempotency_key: str = Field(min_length=1, max_length=128)
    decision_id: str | None = Field(None, min_length=1, max_length=36)
    customer_id: str | None = Id
    email: str | None = Id
    phone: str | None = Id
    loyalty_id: str | None = Id
    login_id: str | None = Id
    cookie_id: str | None = Id
    type: Literal["click", "conversion", "revenue"]
    value: float = Field(1.0, ge=0)
    ts: datetime | None = None

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class OutcomeResponse(BaseModel):
    idempotency_key: str
    recorded: bool = Field(description="false when this key was already recorded")
    decision_id: str | None
    customer_id: str | None


def record_outcome(req: OutcomeRequest, deps: Deps) -> OutcomeResponse:
    cid = req.customer_id
    if req.decision_id is not None:
        row = deps.ledger.decision(req.decision_id)
        if row is None:
            raise field_error("decision_id", "no such decision in the ledger", req.decision_id)
        cid = row.customer_id
    elif cid is None:
        ids = {f: getattr(req, f) for f in ID_FIELDS if getattr(req, f)}
        if not ids:
            raise field_error("decision_id", "give a decision_id or an identifier", None)
        cid = _lookup(ids, deps)
        if cid is None:
            raise field_error(next(iter(ids)), "no known customer has this identifier", None)
    ts = utc(req.ts) if req.ts else now()
    recorded = deps.ledger.record_outcome(
        OutcomeRow(
            idempotency_key=req.idempotency_key,
            decision_id=req.decision_id,
            customer_id=cid,
            type=req.type,
            value=req.value,
            ts=ts,
        )
    )
    return OutcomeResponse(
        idempotency_key=req.idempotency_key,
        recorded=recorded,
        decision_id=req.decision_id,
        customer_id=cid,
    )


def _lookup(ids: dict[str, str], deps: Deps, create: bool = False) -> str | None:
    if deps.graph is None:
        return None
    from features.identity import Identifiers

    return (deps.graph.link if create else deps.graph.lookup)(Identifiers(**ids))


def ingest(data: dict[str, Any], deps: Deps) -> dict[str, Any]:
    """An event into the real-time feature path, plus the basket/outbox state and, for a
    purchase, a revenue outcome (idempotent on the event id)."""
    from features.events import InvalidEvent, parse_event

    try:
        event = parse_event(data)
    except InvalidEvent as exc:
        raise field_error(exc.field, exc.reason, None, "event") from None
    result: dict[str, Any] = {"event_id": event.event_id}
    if deps.ingest is not None:
        store = getattr(deps.features, "store", None)
        try:
            result.update(deps.ingest(event, store=store, graph=deps.graph, settings=deps.settings))
        except Exception as exc:  # noqa: BLE001 - the basket/outbox path below still runs
            result["ingest"] = f"failed: {type(exc).__name__}: {exc}"[:300]
    else:
        result["ingest"] = f"skipped: {deps.missing.get('ingest', 'unavailable')}"
    cid = result.get("customer_id") or event.customer_id
    if cid is None:
        cid = _lookup(event.identifier_dict(), deps, create=True)
    if cid is None:
        result["customer_id"] = None
        return _plain(result)
    result["customer_id"] = cid
    result.update(outbox.track_event(event, cid, deps))
    if event.event_type == "purchase":
        result["outcome_recorded"] = deps.ledger.record_outcome(
            OutcomeRow(
                idempotency_key=f"event:{event.event_id}",
                customer_id=cid,
                decision_id=_attributed(cid, event, deps),
                type="revenue",
                value=float(event.value or 0.0),
                ts=utc(event.ts),
            )
        )
    return _plain(result)


def _plain(result: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe (the live row may hold timestamps or numpy scalars)."""
    return json.loads(json.dumps(result, default=str))


def _attributed(cid: str, event: Any, deps: Deps) -> str | None:
    """The latest decision that showed the purchased product within the attribution window."""
    offer = deps.catalog.by_product().get(event.product_id) if deps.catalog else None
    if offer is None:
        return None
    since = utc(event.ts) - timedelta(days=deps.settings.attribution_days)
    q = (
        select(decisions.c.decision_id)
        .where(
            decisions.c.customer_id == cid,
            decisions.c.offer_id == offer.id,
            decisions.c.ts >= since,
            decisions.c.ts <= utc(event.ts),
        )
        .order_by(decisions.c.ts.desc())
        .limit(1)
    )
    with deps.ledger.engine.connect() as conn:
        return conn.execute(q).scalar()


class ProfileView(BaseModel):
    """What a call-centre agent or store clerk sees about one person."""

    customer_id: str
    profile: dict[str, Any]
    basket: dict[str, Any] | None
    churn_risk: float | None
    recommended: DecideResponse
    excluded: dict[str, str] = Field(description="offers left out, and why (consent, caps...)")


def profile(customer_id: str, deps: Deps, channel: str = "call_centre") -> ProfileView:
    """Profile features, live basket, churn risk and offers with reasons. The offers shown
    are logged like a /decide's (every slot), so they count against caps and suppression."""
    if not 1 <= len(customer_id) <= 256:
        raise field_error("customer_id", "must be 1 to 256 characters", None)
    known = Known(reasons=[], customer_id=customer_id)
    known.features = read_features(customer_id, deps, known.reasons)
    churn = None
    if deps.models is not None:
        try:
            churn = float(deps.models.churn_risk(known.features))
        except Exception as exc:  # noqa: BLE001 - the view still shows everything else
            known.reasons.append(f"churn model: {type(exc).__name__}: {exc}")
    request = DecideRequest(customer_id=customer_id, channel=channel, max_offers=3)
    rec, row = commit(lambda: plan(request, deps, known), deps.ledger)
    return ProfileView(
        customer_id=customer_id,
        profile=_jsonable(known.features),
        basket=outbox.live_basket(customer_id, deps),
        churn_risk=churn,
        recommended=rec,
        excluded=row.scores.get("dropped", {}),
    )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in d.items()}


class EraseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    customer_id: str = Field(min_length=1, max_length=256)


def _erasable_ids(customer_id: str, deps: Deps) -> list[str]:
    """The id asked for, the id it now resolves to, and every id merged into that one: rows
    written before a merge still carry the old id. Read before the graph forgets the merges."""
    if deps.graph is None:
        return [customer_id]
    from features import graph_store as gs

    with deps.graph.engine.connect() as conn:
        current = gs.current_id(conn, customer_id) or customer_id
        merged = conn.execute(select(gs.merges.c.from_id).where(gs.merges.c.into_id == current))
        return list(dict.fromkeys([customer_id, current, *merged.scalars()]))


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    return {k: sum(c[k] for c in counts) for k in counts[0]}


def erase(req: EraseRequest, deps: Deps) -> dict[str, Any]:
    """GDPR erasure under the id and every id merged into it: personal data in the ledger,
    identities, and the feature stores (online rows, offline snapshots, event log). A feature
    store failure is reported in the result, not raised: the other parts are erased anyway."""
    ids = _erasable_ids(req.customer_id, deps)
    result: dict[str, Any] = {"customer_id": req.customer_id, "customer_ids": ids}
    result["ledger"] = _summed([deps.ledger.erase(c) for c in ids])
    if deps.graph is not None:
        result["identities"] = deps.graph.erase(req.customer_id)
    else:
        result["identities"] = f"skipped: {deps.missing.get('graph', 'unavailable')}"
    store = getattr(deps.features, "store", None)  # None: erase_customer opens the store
    try:
        from features.erase import erase_customer

        result["features"] = _summed([erase_customer(store, c, deps.settings) for c in ids])
    except Exception as exc:  # noqa: BLE001 - reported: ledger and identities are already erased
        result["features"] = f"failed: {type(exc).__name__}: {exc}"[:300]
    return result
