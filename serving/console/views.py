"""What each console page shows, as plain functions over the service's parts (no HTTP).

The customer page is ``serving.actions.profile`` (the channels' decision pipeline: the offers
shown are logged under the agent's channel with their true probabilities) plus who the person
is (source records, keys held, merged ids). Its live part (basket, activity, journeys) is read
without deciding, so a page polling for news does not log a decision a second. The marketer
pages read the catalogue, the journeys' results, the report and the model registry.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving import actions, notes, outbox
from serving.activity import person_ids, recent
from serving.console.directory import held_keys, name_of, records_of
from serving.deps import Deps
from serving.journey_agent import live_journeys

# profile fields shown only when the profile has them: segments (after `segments refresh`) and
# customer value (after `clv train`)
OPTIONAL_FIELDS = (
    "rfm_segment",
    "cluster",
    "preferred_channel",
    "value_tier",
    "clv_12m",
    "p_alive",
)
CONSENT_PREFIX = "consent_"
MODELS = ("churn", "propensity")


def age_minutes(iso: str | None, at: datetime) -> float | None:
    if not iso:
        return None
    then = datetime.fromisoformat(iso)
    return max(0.0, (at - then.astimezone(UTC)).total_seconds() / 60)


def live(customer_id: str, deps: Deps) -> dict[str, Any]:
    """The parts that change while the customer is on the line: basket, activity, journeys."""
    at = deps.clock()
    basket = outbox.live_basket(customer_id, deps)
    if basket is not None:
        basket["age_minutes"] = age_minutes(basket.get("updated_at"), at)
    ids = person_ids(customer_id, deps)
    return {
        "basket": basket,
        "activity": recent(ids, deps),
        "journeys": live_journeys(customer_id, deps),
        "notes": notes.of(deps.ledger.engine, ids),
    }


class Conversations:
    """The offers each console user last showed each customer, for ``minutes``: the page
    after an action shows them again instead of deciding anew, since every decision counts
    against the offers' caps (three page views would cap an offer shown in each). Per
    worker and bounded: a miss only means a new decision."""

    def __init__(self, minutes: float = 15, most: int = 2000) -> None:
        self.seconds, self.most = minutes * 60, most
        self._shown: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, user: str, customer_id: str) -> Any | None:
        with self._lock:
            hit = self._shown.get((user, customer_id))
        return hit[1] if hit is not None and time.monotonic() - hit[0] < self.seconds else None

    def put(self, user: str, customer_id: str, shown: Any) -> None:
        with self._lock:
            self._shown[(user, customer_id)] = (time.monotonic(), shown)
            self._shown.move_to_end((user, customer_id))
            while len(self._shown) > self.most:
                self._shown.popitem(last=False)


CONVERSATIONS = Conversations()


def customer(
    customer_id: str, deps: Deps, channel: str, user: str = "", fresh: bool = True
) -> dict[str, Any]:
    """Everything the customer page shows; one decision logged under ``channel``, unless
    ``fresh`` is False and ``user`` showed this customer offers within the conversation."""
    shown = None if fresh else CONVERSATIONS.get(user, customer_id)
    view = actions.profile(customer_id, deps, channel, shown)
    CONVERSATIONS.put(user, view.customer_id, (view.recommended, view.excluded))
    cid = view.customer_id
    ids = person_ids(cid, deps)
    records = records_of(ids, deps)
    features = view.profile
    at = deps.clock()
    basket = view.basket
    if basket is not None:
        basket["age_minutes"] = age_minutes(basket.get("updated_at"), at)
    offers = {o.id: o for o in deps.offers()}
    return {
        "customer_id": cid,
        "name": name_of(records),
        "records": records,
        "merged_ids": ids[1:],
        "keys": held_keys(cid, deps),
        "optional": {k: features[k] for k in OPTIONAL_FIELDS if features.get(k) is not None},
        "consent": {
            k.removeprefix(CONSENT_PREFIX): v
            for k, v in features.items()
            if k.startswith(CONSENT_PREFIX) and isinstance(v, bool | int)
        },
        "profile": {k: v for k, v in features.items() if not k.startswith(CONSENT_PREFIX)},
        "churn_risk": view.churn_risk,
        "basket": basket,
        "decision": view.recommended,
        "reused": shown is not None,
        "answered": answered(view.recommended.decision_id, deps) if shown is not None else {},
        "offer_names": {k: getattr(o, "name", k) for k, o in offers.items()},
        "excluded": view.excluded,
        "journeys": view.journeys,
        "activity": view.activity,
        "notes": notes.of(deps.ledger.engine, ids),
    }


def answered(decision_id: str, deps: Deps) -> dict[str, str]:
    """offer id -> the customer's answer given in the console to this decision's offers: a
    conversion recorded on it is ``accepted``; a decline or call-back is a note."""
    from sqlalchemy import select

    from record.tables import outcomes

    o = outcomes.c
    with deps.ledger.engine.connect() as conn:
        taken = conn.execute(
            select(o.offer_id).where(o.decision_id == decision_id, o.type == "conversion")
        ).scalars()
        accepted = {offer: "accepted" for offer in taken if offer}
    return {**notes.answers(deps.ledger.engine, decision_id), **accepted}


def catalogue(deps: Deps) -> dict[str, Any]:
    """The catalogue file as the service would load it now, or its validation error."""
    from offers.catalog import DEFAULT_PATH, CatalogError, load_catalog

    path = DEFAULT_PATH  # the file the service loads (serving.deps)
    try:
        cat = load_catalog(path)
    except CatalogError as exc:
        return {"path": str(path), "error": str(exc), "offers": []}
    return {"path": str(path), "error": None, "offers": [o.model_dump() for o in cat.offers]}


def journeys(deps: Deps) -> dict[str, Any]:
    """Active journey definitions, and each journey's funnel and lift over its holdout."""
    from experiments.journeys import evaluate, journey_definitions, journey_frames
    from serving.journey_defs import active

    defined = active(deps.settings)
    engine = deps.ledger.engine
    units, steps = journey_frames(engine)
    results = evaluate(units, steps, journey_definitions(engine)) if len(units) else []
    return {
        "active": [
            {
                "name": j.name,
                "entry": type(j.entry).__name__.removesuffix("Trigger").lower(),
                "steps": [s.id for s in j.steps],
                "holdout": j.rules.holdout_share,
            }
            for j in defined.values()
        ],  # fmt: skip
        "results": [r.model_dump() for r in results],
    }


def models(deps: Deps) -> list[dict[str, Any]]:
    """Champion and challenger of each model in the registry, and when the champion was
    promoted; the bandit's version as the service runs it."""
    from training.registry import CHALLENGER, CHAMPION, client_for

    uri = deps.settings.tracking_uri
    trained = not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()
    client = client_for(deps.settings) if trained else None  # never create a registry here
    rows = []
    for model in MODELS:
        row: dict[str, Any] = {"model": model, "champion": None, "challenger": None}
        for alias in (CHAMPION, CHALLENGER) if client is not None else ():
            with contextlib.suppress(Exception):  # no such model or alias yet
                v = client.get_model_version_by_alias(model, alias)
                row[alias] = {
                    "version": str(v.version),
                    "created": _ms(v.creation_timestamp),
                    "updated": _ms(v.last_updated_timestamp),
                    "promotion": (v.tags or {}).get("promotion", ""),
                }
        rows.append(row)
    versions = deps.model_versions()
    rows.append({"model": "bandit", "serving": versions.get("bandit"), "champion": None,
                 "challenger": None})  # fmt: skip
    return rows


def _ms(ts: int | None) -> str | None:
    return datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="seconds") if ts else None
