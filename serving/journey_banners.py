"""Journey banners: a web/app message step waits (a ``journey_steps`` row of result
``banner``, written by the runner) until the customer next visits that channel; that visit's
``/decide`` shows it, restricted to the journey's offers, logged with the journey's experiment,
and the banner is consumed (its row gets the decision's id).

The cost on ``/decide`` is one indexed lookup (the customer's instances, then their step rows
by primary key), and none at all while no active journey has a banner step.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select, update

from journeys.definition import BANNER_CHANNELS
from journeys.state import journey_instances, journey_steps
from serving.deps import Deps
from serving.journey_defs import definition, journeys_with

CHECK_SECONDS = 5.0  # how long "no journey has a banner step" is believed
_checked: dict[str, tuple[float, bool]] = {}  # by journeys folder


@dataclass(frozen=True)
class JourneyVisit:
    """A banner this visit shows: the decision is restricted to ``offers``, logged under
    ``experiment`` (arm treatment: the journey's holdout was drawn at entry) with context
    ``journey = "name:step"``, and gets ``decision_id`` (the banner row already names it)."""

    journey: str
    step: str
    offers: tuple[str, ...]
    experiment: str
    holdout_share: float
    decision_id: str
    instance_id: str
    seq: int

    @property
    def context(self) -> str:
        return f"{self.journey}:{self.step}"


def possible(deps: Deps, channel: str) -> bool:
    """Whether this visit may show a banner: a web/app visit while an active journey has a
    web/app message step (rechecked every few seconds). Other channels never look, so a
    call-centre or e-mail decision pays nothing, not even a thread hop."""
    if channel not in BANNER_CHANNELS:
        return False
    key = str(deps.settings.journeys_path)
    at, known = _checked.get(key, (-CHECK_SECONDS, False))
    if time.monotonic() - at < CHECK_SECONDS:
        return known
    known = bool(journeys_with(deps, BANNER_CHANNELS))
    _checked[key] = (time.monotonic(), known)
    return known


def take(customer_id: str, channel: str, deps: Deps) -> JourneyVisit | None:
    """The customer's oldest unshown banner for ``channel`` of an active instance, claimed for
    this visit (a concurrent visit cannot show it too); None when there is none. Callers ask
    ``possible`` first."""
    s, i = journey_steps.c, journey_instances.c
    q = (
        select(s.instance_id, s.seq, s.step_id, i.journey, i.version)
        .join(journey_instances, i.instance_id == s.instance_id)
        .where(
            i.customer_id == customer_id,
            i.status == "active",
            s.result == "banner",
            s.channel == channel,
            s.decision_id.is_(None),
        )  # fmt: skip
        .order_by(s.ts)
        .limit(1)
    )
    with deps.ledger.engine.begin() as conn:
        row = conn.execute(q).first()
        if row is None:
            return None
        j = definition(conn, row.journey, row.version)
        decision_id = uuid.uuid4().hex
        claimed = conn.execute(
            update(journey_steps)
            .where(s.instance_id == row.instance_id, s.seq == row.seq, s.decision_id.is_(None))
            .values(decision_id=decision_id)
        ).rowcount
    if not claimed:
        return None
    return JourneyVisit(
        journey=j.name,
        step=row.step_id,
        offers=tuple(j.offers),
        experiment=j.experiment,
        holdout_share=j.rules.holdout_share,
        decision_id=decision_id,
        instance_id=row.instance_id,
        seq=row.seq,
    )
