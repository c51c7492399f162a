"""Journey state written as the runner writes it, for the event, banner and agent tests:
the shipped abandoned_basket journey made active in the test's home, and instances on a
chosen step (with the message, outbox row and wait a runner would have left)."""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from journeys.definition import Journey
from journeys.state import journey_instances, journey_steps, journey_versions, journey_waits
from record.tables import DecisionRow, outbox, utc
from serving.deps import Deps
from serving.journey_defs import active

EXAMPLES = Path(__file__).resolve().parents[2] / "journeys" / "examples"
NAME = "abandoned_basket"


def activate(deps: Deps, name: str = NAME) -> Journey:
    """Copy a shipped journey into the home's journeys folder: it is then active."""
    folder = Path(deps.settings.home) / "journeys"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / f"{name}.yaml", folder / f"{name}.yaml")
    return active(deps.settings)[name]


def instance(
    deps: Deps,
    customer_id: str,
    step_id: str | None,
    *,
    entered: datetime,
    due: datetime | None = None,
    status: str = "active",
    context: dict[str, Any] | None = None,
    name: str = NAME,
) -> str:
    """One instance of the active journey ``name``, its version stored."""
    j = active(deps.settings)[name]
    iid = uuid.uuid4().hex
    with deps.ledger.engine.begin() as conn:
        stored = select(journey_versions.c.version).where(
            journey_versions.c.journey == j.name, journey_versions.c.version == j.version
        )
        if conn.execute(stored).first() is None:
            version = {"journey": j.name, "version": j.version, "created_at": entered,
                       "definition": j.model_dump(mode="json")}  # fmt: skip
            conn.execute(insert(journey_versions), [version])
        conn.execute(
            insert(journey_instances),
            [
                {
                    "instance_id": iid,
                    "journey": j.name,
                    "version": j.version,
                    "customer_id": customer_id,
                    "arm": "holdout" if status == "holdout" else "treatment",
                    "status": status,
                    "step_id": step_id,
                    "step_seq": 0,
                    "due_at": due,
                    "entered_at": entered,
                    "context": context or {"product_id": "data_10gb", "channel": "web"},
                }
            ],
        )
    return iid


def step_row(deps: Deps, iid: str, step_id: str, result: str, at: datetime, **kw: Any) -> int:
    """Append a step log row at the instance's step_seq and advance it (as the runner does)."""
    from sqlalchemy import update

    c = journey_instances.c
    with deps.ledger.engine.begin() as conn:
        seq = conn.execute(select(c.step_seq).where(c.instance_id == iid)).scalar_one()
        row = {"instance_id": iid, "seq": seq, "step_id": step_id, "ts": at, "result": result,
               "channel": None, "decision_id": None, "message_id": None, **kw}  # fmt: skip
        conn.execute(insert(journey_steps), [row])
        conn.execute(update(journey_instances).where(c.instance_id == iid).values(step_seq=seq + 1))
    return seq


def emailed_and_waiting(deps: Deps, cid: str, at: datetime) -> tuple[str, str, str]:
    """An instance that sent its e-mail (decision pending in the outbox) and waits 24 h for
    its open: (instance id, decision id, message id)."""
    day = timedelta(hours=24)
    iid = instance(deps, cid, "opened", entered=at - timedelta(hours=1), due=at + day)
    did, mid = uuid.uuid4().hex, uuid.uuid4().hex
    deps.ledger.record_decision(
        DecisionRow(
            decision_id=did,
            ts=at,
            customer_id=cid,
            channel="email",
            context={"journey": f"{NAME}:email"},
            experiment=f"journey:{NAME}",
            arm="treatment",
            offer_id="data_addon",
            propensity=1.0,
            status="pending",
        )  # fmt: skip
    )
    with deps.ledger.engine.begin() as conn:
        conn.execute(insert(outbox), [{"message_id": mid, "created_at": at, "customer_id": cid,
                     "channel": "email", "decision_id": did, "offer_id": "data_addon",
                     "trigger": f"journey:{NAME}:email", "payload": {},
                     "status": "pending"}])  # fmt: skip
        conn.execute(insert(journey_waits), [{"instance_id": iid, "customer_id": cid,
                     "event_type": "email_open", "message_id": mid, "decision_id": did,
                     "expires_at": at + timedelta(hours=24)}])  # fmt: skip
    step_row(deps, iid, "email", "sent", at, channel="email", decision_id=did, message_id=mid)
    step_row(deps, iid, "opened", "waited", at, detail="email_open")
    return iid, did, mid


def state(deps: Deps, iid: str) -> dict[str, Any]:
    """The instance row, with its waits and step log."""
    with deps.ledger.engine.connect() as conn:
        row = dict(
            conn.execute(select(journey_instances).where(journey_instances.c.instance_id == iid))
            .mappings()
            .one()
        )
        row["waits"] = conn.execute(
            select(journey_waits.c.event_type).where(journey_waits.c.instance_id == iid)
        ).scalars().all()  # fmt: skip
        row["steps"] = [
            dict(r)
            for r in conn.execute(
                select(journey_steps)
                .where(journey_steps.c.instance_id == iid)
                .order_by(journey_steps.c.seq)
            ).mappings()
        ]
    for k in ("due_at", "entered_at", "goal_at", "ended_at"):
        row[k] = utc(row[k]) if row[k] is not None else None
    return row
