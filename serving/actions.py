"""The other endpoints as plain functions: outcomes, events, the agent's profile view, erasure.

Semantic input errors are raised as pydantic ``ValidationError`` naming the field, so HTTP
callers get the same 400 shape as for a malformed body; other refusals (a 409, a 503) as
``serving.unavailable.Refused``, with the status and the body the service answers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from features.events import bounded_time, finite_amount
from features.schema import CUSTOMER_ID_MAX
from record import applied
from record.attribution import ORDER_TYPES, order_key
from record.ledger import caller_key, event_key, legacy_keys
from record.tables import OutcomeRow, utc
from serving import audiences, journey_defs, journey_events, journey_intents, outbox
from serving.activity import Activity, person_ids, recent
from serving.decide import DecideRequest, DecideResponse, Known, plan, read_features
from serving.deps import Deps
from serving.journey_agent import JourneyView, NotFound, live_journeys
from serving.schemas import ID_FIELDS, CustomerId, Id, field_error
from serving.unavailable import Refused, describe
from serving.writer import commit

log = logging.getLogger("nextbest.actions")


class OutcomeRequest(BaseModel):
    """What happened after a decision; a retry with the same key counts once. A purchase
    (``conversion``, ``revenue``) is one order however often it is reported: its ``order_id``,
    else a key of customer, product, amount and minute (``record.attribution.order_key``).
    ``delivered`` is a sender's receipt for a message, ``open`` its report that the customer
    opened it (both need the ``decision_id``); an open or a click of a message resolves the
    journey waits for it (``serving.journey_events``)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    idempotency_key: str = Field(min_length=1, max_length=128)
    decision_id: str | None = Field(None, min_length=1, max_length=36)
    customer_id: str | None = CustomerId
    email: str | None = Id
    phone: str | None = Id
    loyalty_id: str | None = Id
    login_id: str | None = Id
    cookie_id: str | None = Id
    type: Literal["click", "conversion", "revenue", "delivered", "open"]
    value: float = Field(1.0, ge=0)
    ts: datetime | None = None
    order_id: str | None = Field(None, min_length=1, max_length=128)
    offer_id: str | None = Field(
        None, min_length=1, max_length=64, description="the offer this outcome is about, if any"
    )

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        return finite_amount(v)

    @field_validator("ts")
    @classmethod
    def _bounded_time(cls, v: datetime | None) -> datetime | None:
        # one rule with /events (features.events): a naive time is refused, not taken as UTC
        return None if v is None else bounded_time(v)


class OutcomeResponse(BaseModel):
    idempotency_key: str
    recorded: bool = Field(description="false when this key was already recorded")
    decision_id: str | None
    customer_id: str | None
    order_id: str | None = Field(None, description="the order a purchase counts as")


def checked_time(ts: datetime, deps: Deps, title: str = "request") -> datetime:
    """A caller's time in UTC, refused (naming ``ts``) when it is ahead of the service's clock
    by more than ``outcome_future_minutes`` or older than any attribution window can count."""
    s, at, ts = deps.settings, utc(deps.clock()), utc(ts)
    if ts > at + timedelta(minutes=s.outcome_future_minutes):
        reason = f"more than {s.outcome_future_minutes:g} minutes ahead of the service's clock"
        raise field_error("ts", reason, ts.isoformat(), title)
    oldest = s.attribution_days + s.outcome_grace_days
    if ts < at - timedelta(days=oldest):
        reason = f"older than {oldest:g} days (attribution_days + outcome_grace_days)"
        raise field_error("ts", reason, ts.isoformat(), title)
    return ts


def checked_value(value: float | None, deps: Deps, title: str = "request") -> None:
    """Refuse (naming ``value``) an amount above ``max_money_value``: one absurd order would
    dominate every mean the report and the bandit take."""
    top = deps.settings.max_money_value
    if value is not None and value > top:
        raise field_error("value", f"must be at most {top:g} (max_money_value)", None, title)


def known_customer(customer_id: str, deps: Deps) -> str:
    """The id the identity graph knows this customer by now (a recorded merge followed); a
    404 naming ``customer_id`` when it has never seen it (an outcome or a profile of nobody
    would be invented). Without a graph the id cannot be checked and is kept."""
    if deps.graph is None:
        return customer_id
    found = _lookup({"customer_id": customer_id}, deps)
    if found is None:
        raise NotFound("customer_id", "no such customer (unknown to the identity graph)")
    return found


def _offer(offer_id: str | None, deps: Deps) -> Any | None:
    """The catalogue's offer of this id, or None."""
    return next((o for o in deps.offers() if o.id == offer_id), None)


def record_outcome(req: OutcomeRequest, deps: Deps) -> OutcomeResponse:
    ts = checked_time(req.ts, deps) if req.ts else utc(deps.clock())
    checked_value(req.value, deps)
    named = req.offer_id
    if named is not None and deps.catalog is not None and _offer(named, deps) is None:
        raise field_error("offer_id", "no such offer in the catalogue", req.offer_id)
    cid, row = req.customer_id, None
    if req.decision_id is not None:
        row = deps.ledger.decision(req.decision_id)
        if row is None:
            raise field_error("decision_id", "no such decision in the ledger", req.decision_id)
        cid = row.customer_id
    elif req.type == "delivered":
        raise field_error("decision_id", "a delivery receipt needs the message's decision_id", None)
    elif req.type == "open":
        raise field_error("decision_id", "an open needs the message's decision_id", None)
    elif cid is not None:
        cid = known_customer(cid, deps)
    else:
        ids = {f: getattr(req, f) for f in ID_FIELDS if getattr(req, f)}
        if not ids:
            raise field_error("decision_id", "give a decision_id or an identifier", None)
        cid = _lookup(ids, deps)
        if cid is None:
            raise NotFound(next(iter(ids)), "no known customer has this identifier")
    if req.type in ("delivered", "open") and row.status == "cancelled":
        reason = "its message was cancelled before it was sent"
        raise field_error("decision_id", reason, req.decision_id)
    if req.type == "delivered":
        recorded = outbox.delivered(req.decision_id, deps)
        return OutcomeResponse(idempotency_key=req.idempotency_key, recorded=recorded,
                               decision_id=req.decision_id, customer_id=cid)  # fmt: skip
    # the product bought: the offer named, else the offer a conversion converted
    if named is None and row is not None and req.type == "conversion":
        named = row.offer_id
    product = getattr(_offer(named, deps), "product_id", None)
    order = req.order_id
    if order is None and req.type in ORDER_TYPES and cid is not None:
        order = order_key(cid, product, req.value, ts)
    key = caller_key(req.idempotency_key)  # the callers' own key space
    recorded, stored = deps.ledger.record_outcome_once(
        OutcomeRow(
            idempotency_key=key,
            decision_id=req.decision_id,
            customer_id=cid,
            type=req.type,
            value=req.value,
            ts=ts,
            order_id=order,
            offer_id=req.offer_id,
        ),
        legacy_keys(req.idempotency_key),
    )
    if stored is not None and (field := _differs(req, cid, stored)) is not None:
        shown = {**stored.model_dump(mode="json"), "idempotency_key": req.idempotency_key}
        shown["ts"] = utc(stored.ts).isoformat()
        reason = f"already recorded with another payload ({field} differs)"
        raise Refused(409, "idempotency_key", reason, stored=shown)
    response = OutcomeResponse(
        idempotency_key=req.idempotency_key,
        recorded=recorded,
        decision_id=req.decision_id,
        customer_id=cid,
        order_id=stored.order_id if stored is not None else order,
    )
    if not recorded and stored is None:
        return response  # recorded once already, for a person since erased
    if req.type == "open" and row.status in ("pending", "sent"):
        outbox.delivered(req.decision_id, deps)  # opened: evidently delivered

    def journeys() -> dict[str, Any]:
        if req.type in ("open", "click") and row is not None:
            journey_events.on_outcome(req.type, row, ts, deps)
        elif req.type in ORDER_TYPES and cid is not None:  # a purchase: exits, goals
            bought = journey_events.Happened("purchase", ts, row.channel if row else "store",
                                             product, key)  # fmt: skip
            journey_events.on_event(bought, cid, deps)
        return {}

    # once per outcome, a retry (the same payload) completing it if it failed the first time
    if cid is not None:
        failed = _once(key, "outcome_journeys", cid, journeys, deps, {})
        if failed:
            raise Refused(503, "ledger", failed, idempotency_key=req.idempotency_key)
    return response


def _differs(req: OutcomeRequest, cid: str | None, stored: OutcomeRow) -> str | None:
    """The first field a retried key's report changes from the stored one, or None (a retry).
    A time or an order the caller left out is the service's to fill, not part of the report."""
    pairs = [
        ("type", req.type, stored.type),
        ("value", req.value, stored.value),
        ("decision_id", req.decision_id, stored.decision_id),
        ("customer_id", cid, stored.customer_id),
        ("ts", utc(req.ts) if req.ts else None, utc(stored.ts) if req.ts else None),
        ("order_id", req.order_id, stored.order_id if req.order_id else None),
        ("offer_id", req.offer_id, stored.offer_id),
    ]
    return next((field for field, new, old in pairs if new != old), None)


def _once(
    event_id: str,
    sink: str,
    cid: str,
    apply: Callable[[], dict[str, Any]],
    deps: Deps,
    result: dict[str, Any],
) -> str | None:
    """Apply a sink of several transactions unless it was applied, then mark it applied
    (``record.applied``); its answer merged into ``result``. The failure's one-line reason,
    or None."""
    try:
        if applied.applied(deps.ledger.engine, event_id, sink):
            return None
        result.update(apply())
        applied.mark(deps.ledger.engine, event_id, sink, cid, utc(deps.clock()))
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - the caller answers 503 and the retry completes it
        return _reason(event_id, sink, exc)
    return None


def _reason(event_id: str, sink: str, exc: BaseException) -> str:
    """One line for the 503 and the log (no traceback: the store being down is reported by
    its own health check, and every retry would repeat it)."""
    why = describe(exc)  # the driver's line: never the SQL or its parameters
    log.warning("event %s: %s not applied, the caller is told to retry (%s)", event_id, sink, why)
    return why


def _lookup(ids: dict[str, str], deps: Deps, create: bool = False) -> str | None:
    if deps.graph is None:
        return None
    from features.identity import Identifiers

    return (deps.graph.link if create else deps.graph.lookup)(Identifiers(**ids))


def ingest(data: dict[str, Any], deps: Deps) -> dict[str, Any]:
    """An event into the real-time feature path, plus the basket/outbox state, the journeys
    and, for a purchase, a revenue outcome: each once per event id, however often the event
    is sent. A part that fails (the online store or the ledger down) is a ``Refused`` 503
    naming it, after every other part was applied; the client's retry applies what is left."""
    from features.events import InvalidEvent, parse_event

    try:
        event = parse_event(data)
    except InvalidEvent as exc:
        raise field_error(exc.field, exc.reason, None, "event") from None
    checked_time(event.ts, deps, "event")
    checked_value(event.value, deps, "event")
    result: dict[str, Any] = {"event_id": event.event_id}
    failed: dict[str, str] = {}
    if deps.ingest is not None:
        from features.ingest import PushInProgress

        store = getattr(deps.features, "store", None)
        try:
            result.update(deps.ingest(event, store=store, graph=deps.graph, settings=deps.settings))
        except ValidationError:
            raise
        except PushInProgress as exc:  # a copy of this event is being applied: that one does
            raise Refused(503, "features", str(exc), event_id=event.event_id) from None
        except Exception as exc:  # noqa: BLE001 - the ledger's parts below still run
            failed["features"] = _reason(event.event_id, "features", exc)
    else:
        result["ingest"] = f"skipped: {deps.missing.get('ingest', 'unavailable')}"
    cid = result.get("customer_id") or event.customer_id
    if cid is None:
        try:
            cid = _lookup(event.identifier_dict(), deps, create=True)
        except Exception as exc:  # noqa: BLE001 - the identity graph lives in the ledger
            raise Refused(503, "ledger", _reason(event.event_id, "identity", exc),
                          event_id=event.event_id) from None  # fmt: skip
    result["customer_id"] = cid
    if cid is not None:
        _apply_once(event, cid, deps, result, failed)
    if failed:
        part, why = next(iter(failed.items()))
        raise Refused(503, part, why, event_id=event.event_id)
    return _plain(result)


def _apply_once(
    event: Any, cid: str, deps: Deps, result: dict[str, Any], failed: dict[str, str]
) -> None:
    """The event's parts in the ledger, each applied once (``record.applied``; the revenue
    outcome by its key), their answers merged into ``result``, their failures into ``failed``
    (by part: ``ledger``)."""
    active = journey_defs.active(deps.settings)
    sinks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        # journeys first: an exit cancels its own messages with its instance's state
        ("journeys", lambda: journey_events.on_event(event, cid, deps)),
        ("intents", lambda: journey_intents.track(event, cid, active, deps)),
    ]
    if groups := audiences.reacting(deps.settings, event.event_type):
        # issue 18: a purchase takes a customer out of a group that wants none, at once
        sinks.append(("audiences", lambda: audiences.on_event(event, cid, deps, groups)))
    for sink, apply in sinks:
        why = _once(event.event_id, sink, cid, apply, deps, result)
        if why:
            failed.setdefault("ledger", why)
    # one transaction each: the basket's mark commits with it (serving.outbox), the revenue
    # is once by its key
    for sink, apply in (("basket", outbox.track_event), ("revenue", _revenue)):
        try:
            result.update(apply(event, cid, deps))
        except ValidationError:
            raise
        except Exception as exc:  # noqa: BLE001 - answered 503; the retry completes it
            failed.setdefault("ledger", _reason(event.event_id, sink, exc))


def _revenue(event: Any, cid: str, deps: Deps) -> dict[str, Any]:
    """A purchase's revenue outcome, once under the event's key. The order names the offer of
    the product bought, if any: attribution credits it to the last decision that showed that
    offer (record.attribution.credit)."""
    if event.event_type != "purchase":
        return {}
    offer = deps.catalog.by_product().get(event.product_id) if deps.catalog else None
    value = float(event.value or 0.0)
    order = event.order_id or order_key(cid, event.product_id, value, event.ts)
    recorded = deps.ledger.record_outcome(
        OutcomeRow(
            idempotency_key=event_key(event.event_id),
            customer_id=cid,
            type="revenue",
            value=value,
            ts=utc(event.ts),
            order_id=order,
            offer_id=offer.id if offer is not None else None,
        )
    )
    return {"outcome_recorded": recorded, "order_id": order}


def _plain(result: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe (the live row may hold timestamps or numpy scalars)."""
    return json.loads(json.dumps(result, default=str))


class ProfileView(BaseModel):
    """What a call-centre agent or store clerk sees about one person."""

    customer_id: str
    profile: dict[str, Any]
    basket: dict[str, Any] | None
    churn_risk: float | None
    recommended: DecideResponse
    excluded: dict[str, str] = Field(description="offers left out, and why (consent, caps...)")
    journeys: list[JourneyView] = Field(
        default_factory=list,
        description="the journeys the customer is in: step, status, next planned contact",
    )
    segments: dict[str, Any] = Field(
        default_factory=dict,
        description="RFM segment and behavioural cluster (as of the last segments refresh)",
    )
    preferred_channel: str | None = Field(
        None, description="consented contact channel with the highest expected response, now"
    )
    audiences: dict[str, str] = Field(
        default_factory=dict, description="target groups the customer is in, and their arm"
    )
    activity: list[Activity] = Field(
        default_factory=list,
        description="the latest events, decisions and outcomes across channels, newest first",
    )
    identity_links: list[dict[str, Any]] = Field(
        default_factory=list,
        description="why this customer's records are one person: each link's two records and "
        "rule (as `nextbest identity explain`), newest last",
    )


def profile(
    customer_id: str,
    deps: Deps,
    channel: str = "call_centre",
    shown: tuple[DecideResponse, dict[str, str]] | None = None,
) -> ProfileView:
    """Profile features, live basket, churn risk and offers with reasons. The offers shown
    are logged like a /decide's (every slot), so they count against caps and suppression.
    ``shown``: the offers (and exclusions) already shown in this conversation, kept instead
    of deciding again (the console's page after an action: one conversation, one decision)."""
    if not 1 <= len(customer_id) <= CUSTOMER_ID_MAX:
        raise field_error("customer_id", f"must be 1 to {CUSTOMER_ID_MAX} characters", None)
    customer_id = known_customer(customer_id, deps)
    known = Known(reasons=[], customer_id=customer_id)
    known.features = read_features(customer_id, deps, known.reasons)
    churn = None
    if deps.models is not None:
        try:
            churn = float(deps.models.churn_risk(known.features))
        except Exception as exc:  # noqa: BLE001 - the view still shows everything else
            known.reasons.append(f"churn model: {type(exc).__name__}: {exc}")
    if shown is None:
        request = DecideRequest(customer_id=customer_id, channel=channel, max_offers=3)
        rec, row = commit(lambda: plan(request, deps, known), deps.ledger)
        excluded = row.scores.get("dropped", {})
    else:
        rec, excluded = shown
    return ProfileView(
        customer_id=customer_id,
        profile=_jsonable(known.features),
        basket=outbox.live_basket(customer_id, deps),
        churn_risk=churn,
        recommended=rec,
        excluded=excluded,
        journeys=live_journeys(customer_id, deps),
        **_segments_view(customer_id, known.features, deps, known.reasons),
        activity=recent(person_ids(customer_id, deps), deps),
        identity_links=identity_links(customer_id, deps),
    )


SEGMENT_FIELDS = ("rfm_segment", "rfm_score", "cluster", "cluster_id")


def _segments_view(
    customer_id: str, features: dict[str, Any], deps: Deps, reasons: list[str]
) -> dict[str, Any]:
    """Segments from the profile, the preferred channel scored now (else the refresh's), and
    the target groups the customer is in (issue 18); a failing part is left empty."""
    from serving.audiences import memberships
    from serving.channels import preferred_channels

    out: dict[str, Any] = {"segments": {k: features.get(k) for k in SEGMENT_FIELDS}}
    try:
        live = preferred_channels(deps.models, deps.offers(), [features])[0]
    except Exception as exc:  # noqa: BLE001 - the view still shows everything else
        reasons.append(f"preferred channel: {type(exc).__name__}: {exc}")
        live = None
    out["preferred_channel"] = live or features.get("preferred_channel")
    try:
        out["audiences"] = memberships(deps, customer_id)
    except Exception as exc:  # noqa: BLE001
        reasons.append(f"audiences: {type(exc).__name__}: {exc}")
    return out


PROFILE_LINKS = 50  # links shown in the agent view; `identity explain` lists them all


def identity_links(customer_id: str, deps: Deps) -> list[dict[str, Any]]:
    """The identity graph's links of this customer, for the agent view (empty without a graph,
    or for a customer known only from real-time visits)."""
    if deps.graph is None:
        return []
    from features.identity_admin import StewardError, explain

    try:
        links = explain(deps.graph, customer_id).links
    except StewardError:
        return []
    return [link.model_dump(mode="json") for link in links[-PROFILE_LINKS:]]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in d.items()}


class EraseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    customer_id: str = Field(min_length=1, max_length=CUSTOMER_ID_MAX)


def erase(req: EraseRequest, deps: Deps) -> dict[str, Any]:
    """GDPR erasure under the id and every id merged into it: personal data in the ledger,
    identities, feature stores (online rows, offline snapshots, event log) and the models'
    validation artifacts, through a recorded request that a retry finishes
    (``serving.erasure``). A store failure is reported in the result, not raised."""
    from serving import erasure

    return erasure.erase(req.customer_id, deps)
