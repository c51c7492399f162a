"""Cross-checks of a journey against the world outside its file: the offer catalogue, the
events each trigger carries, the channels each message can reach.

``journeys.definition`` checks a journey's shape and step graph; this module checks what needs
the catalogue or knowledge of the events, and only what is clearly wrong (a message no offer
can fill, a goal that can never happen). Each check returns ``(location, reason)`` pairs; the
loader (``journeys.load``) turns them into ``file:line: journey: where: reason`` lines. The
checks take the journey's top-level fields one by one, so a file whose steps are broken still
has its offers and goal checked in the same run.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from features.schema import EVENT_TYPES
from journeys.definition import (
    BehaviouralTrigger,
    CalendarTrigger,
    IntentTrigger,
    Journey,
    Loc,
    MessageStep,
    WaitForStep,
    format_duration,
)
from offers.catalog import NO_OFFER, Catalog

Issue = tuple[Loc, str]

# Events whose rows name the product (``product_id``): only an intent trigger on one of them
# gives an instance an entry product for ``product: entry``.
_NAMING = ("basket_add", "basket_remove", "product_view", "checkout", "purchase", "purchase_intent")
PRODUCT_EVENTS = tuple(e for e in _NAMING if e in EVENT_TYPES)
# Events a message causes only on these channels: waiting for an e-mail open of an SMS step
# would always time out.
EVENT_CHANNELS: dict[str, tuple[str, ...]] = {
    "email_send": ("email",),
    "email_open": ("email",),
    "email_click": ("email",),
    "sms_send": ("sms",),
    "sms_click": ("sms",),
}


def cross_check(journey: Journey, catalog: Catalog) -> list[Issue]:
    """Every cross-check problem of a journey that already passed its shape checks."""
    return check_parts({name: getattr(journey, name) for name in Journey.model_fields}, catalog)


def check_parts(parts: Mapping[str, Any], catalog: Catalog) -> list[Issue]:
    """The cross-checks on whichever top-level fields parsed (a missing key: that field did
    not parse, its checks are skipped)."""
    offers = parts.get("offers")
    entry = parts.get("entry")
    steps = parts.get("steps")
    issues: list[Issue] = []
    if offers is not None:
        issues += _offers(offers, catalog)
    if entry is not None:
        issues += _entry(entry)
    goal = parts.get("goal")
    if goal is not None:
        issues += _product(("goal",), goal.event, goal.product, entry, catalog)
        if goal.within <= timedelta(0):
            issues.append((("goal", "within"), _not_positive(goal.within)))
    for i, rule in enumerate(parts.get("exit") or []):
        issues += _product(("exit", i), rule.event, rule.product, entry, catalog)
    rules = parts.get("rules")
    if rules is not None and rules.reentry_after < timedelta(0):
        issues.append((("rules", "reentry_after"), "must not be negative"))
    if steps is not None:
        known = [o for o in offers or [] if o in catalog.ids]
        issues += _messages(steps, known, catalog) if known else []
        issues += _waits(steps)
    return issues


def _offers(offers: list[str], catalog: Catalog) -> list[Issue]:
    issues: list[Issue] = []
    known = ", ".join(i for i in catalog.ids if i != NO_OFFER)
    for i, offer in enumerate(offers):
        if offer not in catalog.ids:
            issues.append((("offers", i), f"unknown offer {offer!r} (known: {known})"))
        elif offer in offers[:i]:
            issues.append((("offers", i), f"offer {offer!r} is listed twice"))
    return issues


def _entry(entry: Any) -> list[Issue]:
    issues: list[Issue] = []
    durations: list[tuple[str, timedelta | None]] = []
    if isinstance(entry, IntentTrigger):
        durations = [("within", entry.within), ("idle", entry.idle)]
    elif isinstance(entry, BehaviouralTrigger):
        durations = [("window", entry.window)]
    for field, value in durations:
        if value is not None and value <= timedelta(0):
            issues.append((("entry", field), _not_positive(value)))
    if isinstance(entry, CalendarTrigger) and entry.date is not None:
        try:
            if len(entry.date) == 10:
                date.fromisoformat(entry.date)
            else:
                date(2000, int(entry.date[:2]), int(entry.date[3:]))  # a leap year: 02-29 is one
        except ValueError:
            issues.append((("entry", "date"), f"{entry.date!r} is not a date"))
    return issues


def _describe(entry: Any) -> str:
    if isinstance(entry, IntentTrigger):
        return f"an intent trigger on {entry.event}"
    return f"a {entry.type} trigger"


def _product(loc: Loc, event: str, product: str, entry: Any, catalog: Catalog) -> list[Issue]:
    """``product`` is any, entry (the entry event's product) or a catalogue offer's product,
    on an event that names a product at all."""
    if product == "any":
        return []
    where = (*loc, "product")
    if event not in PRODUCT_EVENTS:
        return [(where, f"a {event} event names no product: use product: any")]
    if product == "entry":
        if entry is None or (isinstance(entry, IntentTrigger) and entry.event in PRODUCT_EVENTS):
            return []
        names = ", ".join(PRODUCT_EVENTS)
        return [
            (
                where,
                f"'entry' is the product of the entry event, and {_describe(entry)} has none "
                f"(only intent triggers on {names} have one)",
            )
        ]
    if product == NO_OFFER:
        return [(where, f"{NO_OFFER!r} sells nothing: give any, entry or an offer id")]
    if product not in catalog.ids:
        known = ", ".join(i for i in catalog.ids if i != NO_OFFER)
        return [(where, f"unknown product {product!r}: give any, entry or an offer id ({known})")]
    return []


def _messages(steps: list[Any], offers: list[str], catalog: Catalog) -> list[Issue]:
    """A message channel that none of the journey's offers may go on would never send."""
    issues: list[Issue] = []
    for k, step in enumerate(steps):
        if not isinstance(step, MessageStep):
            continue
        targets: list[tuple[Loc, str]]
        if step.channel == "best_channel":
            targets = [(("steps", k, "channels", j), c) for j, c in enumerate(step.channels)]
        else:
            targets = [(("steps", k, "channel"), step.channel)]
        for loc, channel in targets:
            if any(channel in catalog.get(o).channels for o in offers):
                continue
            there = [o.id for o in catalog.offers if channel in o.channels and o.id != NO_OFFER]
            hint = f"offers that can: {', '.join(there)}" if there else "no offer can"
            issues.append((loc, f"none of this journey's offers can go on {channel} ({hint})"))
    return issues


def _waits(steps: list[Any]) -> list[Issue]:
    """A wait_for whose event its message's channel cannot cause, or with no positive timeout."""
    issues: list[Issue] = []
    by_id = {s.id: s for s in steps}
    for k, step in enumerate(steps):
        if not isinstance(step, WaitForStep):
            continue
        if step.timeout <= timedelta(0):
            issues.append((("steps", k, "timeout"), _not_positive(step.timeout)))
        message = by_id.get(step.of) if step.of else None
        needs = EVENT_CHANNELS.get(step.event)
        if not isinstance(message, MessageStep) or needs is None:
            continue
        # best_channel with no channels listed: any channel, so any event may follow
        best = message.channel == "best_channel"
        channels = message.channels if best else [message.channel]
        if channels and not set(channels) & set(needs):
            on = " or ".join(channels)
            issues.append(
                (("steps", k, "event"), f"{step.event} cannot follow a message on {on} ({step.of})")
            )
    return issues


def _not_positive(d: timedelta) -> str:
    return f"must be positive, got {format_duration(d)}"
