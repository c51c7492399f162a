"""What an agent or a store clerk sees of a customer's journeys, and what they may do: end
one, or pause and resume it.

The view is the customer's live instances with the step each is on and the next planned
contact (the next message step along the path the instance takes when nothing happens, and
when it is due), so an agent can continue the dialog instead of talking over it.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update

from journeys.definition import (
    ExitStep,
    Journey,
    MessageStep,
    RandomSplitStep,
    WaitForStep,
    WaitStep,
)
from journeys.state import LIVE, journey_instances
from record.tables import utc
from serving.deps import Deps
from serving.journey_defs import definition
from serving.journey_events import end_instance, log_step
from serving.schemas import field_error
from serving.unavailable import Refused


class NextContact(BaseModel):
    step: str
    channel: str
    due_at: datetime | None = Field(description="None: as soon as the instance is resumed")


class JourneyView(BaseModel):
    journey: str
    version: str
    instance_id: str
    step: str | None
    status: Literal["active", "paused"]
    entered_at: datetime
    next_contact: NextContact | None = Field(
        description="the next message if nothing happens first; None: none planned, or it "
        "depends on a split still ahead"
    )


class JourneyAction(BaseModel):
    """An agent's or clerk's request to end, pause or resume a customer's journey."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    customer_id: str = Field(min_length=1, max_length=64)
    journey: str = Field(min_length=1, max_length=40)
    reason: str = Field("", max_length=160, description="kept in the step log")


class NotFound(Refused):
    """A 404: ``field`` names what was not found."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(404, field, reason)
        self.field, self.reason = field, reason


def live_journeys(customer_id: str, deps: Deps) -> list[JourneyView]:
    """The customer's active and paused journeys, oldest entry first."""
    ji = journey_instances.c
    with deps.ledger.engine.connect() as conn:
        rows = conn.execute(
            select(journey_instances)
            .where(ji.customer_id == customer_id, ji.status.in_(LIVE))
            .order_by(ji.entered_at)
        ).mappings().all()  # fmt: skip
        views = []
        for r in rows:
            j = definition(conn, r["journey"], r["version"])
            views.append(
                JourneyView(
                    journey=r["journey"],
                    version=r["version"],
                    instance_id=r["instance_id"],
                    step=r["step_id"],
                    status=r["status"],
                    entered_at=utc(r["entered_at"]),
                    next_contact=next_contact(j, r),
                )
            )
    return views


def next_contact(j: Journey, inst: Any) -> NextContact | None:
    """Follow the path taken when nothing happens (waits run out, wait_for times out) from the
    step the instance is on, due at ``due_at``, to the next message step."""
    paused = inst["status"] == "paused"
    at = None if paused or inst["due_at"] is None else utc(inst["due_at"])
    step = j.step(inst["step_id"]) if inst["step_id"] else j.first
    for _ in range(len(j.steps) + 1):
        if isinstance(step, MessageStep):
            return NextContact(step=step.id, channel=step.channel, due_at=at)
        if isinstance(step, ExitStep):
            return None
        if isinstance(step, WaitStep | WaitForStep):
            following = step.next if isinstance(step, WaitStep) else step.on_timeout
            if step.id != inst["step_id"] and at is not None:  # a wait still ahead
                at = _after(j, step, at)
            step = j.step(following)
        elif isinstance(step, RandomSplitStep) and inst["path"]:
            branch = next((b for b in step.branches if b.name == inst["path"]), None)
            if branch is None:
                return None
            step = j.step(branch.next)
        else:
            return None  # a split: the branch is not known until it runs
    return None


def _after(j: Journey, step: WaitStep | WaitForStep, at: datetime) -> datetime:
    """When a wait that starts at ``at`` ends."""
    if isinstance(step, WaitForStep):
        return at + step.timeout
    if step.duration is not None:
        return at + step.duration
    zone = j.rules.zone()
    local = at.astimezone(zone)
    until = datetime.combine(local.date(), step.until or time(0), zone)
    return utc(until if until > local else until + timedelta(days=1))


def act(action: str, req: JourneyAction, deps: Deps, by: str = "agent") -> dict[str, Any]:
    """End, pause or resume the customer's live instance of the journey (400 on a bad action
    or a state it cannot take, 404 when there is no such live instance)."""
    if action not in ("end", "pause", "resume"):
        raise field_error("action", f"must be end, pause or resume, got {action!r}", action)
    ji = journey_instances.c
    ts = utc(deps.clock())
    with deps.ledger.engine.begin() as conn:
        row = conn.execute(
            select(ji.instance_id, ji.status).where(
                ji.customer_id == req.customer_id, ji.journey == req.journey, ji.status.in_(LIVE)
            )
        ).first()
        if row is None:
            raise NotFound(
                "journey", f"customer {req.customer_id!r} is not in journey {req.journey!r}"
            )
        iid, status = row
        why = f"{by}: {req.reason}" if req.reason else by
        if action == "end":
            end_instance(conn, iid, "ended", why, ts)
        else:
            want, new = ("active", "paused") if action == "pause" else ("paused", "active")
            if status != want:
                raise field_error("action", f"the journey is {status}, it cannot {action}", action)
            q = update(journey_instances).where(ji.instance_id == iid, ji.status == want)
            conn.execute(q.values(status=new, claimed_until=None))
            log_step(conn, iid, None, ts, action[:16], detail=why[:200])
    return {"customer_id": req.customer_id, "journey": req.journey, "instance_id": iid,
            "status": {"end": "ended", "pause": "paused", "resume": "active"}[action]}  # fmt: skip
