"""The decision pipeline as one plain function: identity -> features -> holdout -> eligibility,
consent and caps -> scores -> arbitration -> exploration -> ledger row -> answer.

Each dependency may be missing or fail; the decision then falls back (cold start, catalogue
priors, epsilon-greedy) and says why, instead of failing the caller.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from record.assignment import assign_holdout, declared
from record.ledger_pending import PlannedOn
from record.tables import DecisionRow, History
from serving import journey_banners, policy
from serving.deps import Deps
from serving.journey_banners import JourneyVisit
from serving.schemas import (
    DecideRequest,
    DecideResponse,
    RankedOffer,
    VisitContext,
    field_error,
)
from serving.writer import commit
from training.bandit import cold_offers, feature_snapshot

__all__ = [
    "DecideRequest",
    "DecideResponse",
    "RankedOffer",
    "Scope",
    "VisitContext",
    "decide",
    "plan",
]
log = logging.getLogger("nextbest.decide")
HISTORY_DAYS = 90  # caps, offer periods and suppression look this far back


UNKNOWN_ID = "cold start: customer_id: unknown (the identity graph has never seen it)"


def resolve(
    request: DecideRequest, deps: Deps, reasons: list[str], *, verify: bool = False
) -> str | None:
    """The customer id: given directly, or a deterministic lookup of the identifiers.

    ``verify`` (a channel's request, POST /decide): a given customer_id counts only when the
    identity graph knows it (a recorded merge followed); one it has never seen is a customer
    new to us, decided as an unknown visitor (``UNKNOWN_ID``), not logged as a known one, unless
    another identifier resolves. Without ``verify`` (the journey runner, the basket scan: ids
    from our own records) the id is taken as given."""
    if request.customer_id and (not verify or deps.graph is None):
        return request.customer_id  # without a graph it cannot be checked: taken as given
    ids = request.identifiers()
    if not ids:
        reasons.append("cold start: anonymous visitor")
        return None
    if deps.graph is None:
        reasons.append(f"identity: {deps.missing.get('graph', 'unavailable')}")
        return None
    try:
        from features.identity import Identifiers

        cid = deps.graph.lookup(Identifiers(**ids))
    except Exception as exc:  # noqa: BLE001
        reasons.append(f"identity: {type(exc).__name__}: {exc}")
        return None
    if cid is None:
        reasons.append(UNKNOWN_ID if request.customer_id else "cold start: unknown visitor")
    return cid


def experiment_of(request: DecideRequest, deps: Deps) -> str:
    """The request's experiment: its declared campaign, else the default. An undeclared name
    is refused (400): any new name would open a fresh holdout draw for everyone."""
    campaign = request.context.campaign
    if campaign is None:
        return deps.settings.experiment
    names = declared(deps.settings)
    if campaign not in names:
        reason = f"unknown experiment {campaign!r}; declared: {', '.join(names)}"
        raise field_error("context.campaign", reason, campaign)
    return campaign


@dataclass(frozen=True)
class Scope:
    """A plan made for a journey's step rather than a free visit: its offers only, in the
    journey's experiment (whose holdout was drawn at entry with the journey's own share), so
    the caps, consent, scores and logged probability are those of the same pipeline."""

    experiment: str
    offers: frozenset[str]
    holdout_share: float
    decision_id: str | None = None  # given: the id a banner row was claimed with


@dataclass
class Known:
    """What is known about the visitor before the policy runs."""

    reasons: list[str]
    customer_id: str | None = None
    features: dict[str, Any] = field(default_factory=dict)


def read_features(cid: str | None, deps: Deps, reasons: list[str]) -> dict[str, Any]:
    if cid is None:
        return {}
    if deps.features is None:
        reasons.append(f"features: {deps.missing.get('features', 'unavailable')}")
        return {}
    try:
        return deps.features.read(cid, now=deps.clock())
    except Exception as exc:  # noqa: BLE001
        reasons.append(f"features: {type(exc).__name__}: {exc}")
        return {}


def know(request: DecideRequest, deps: Deps, *, verify: bool = False) -> Known:
    """Who the visitor is and their features, each with the reason it fell back, if any
    (``verify``: see :func:`resolve`)."""
    known = Known(reasons=[])
    known.customer_id = resolve(request, deps, known.reasons, verify=verify)
    known.features = read_features(known.customer_id, deps, known.reasons)
    return known


def allowed_offers(
    request: DecideRequest,
    history: History,
    features: dict[str, Any],
    deps: Deps,
    ts: datetime,
    only: frozenset[str] | None = None,
) -> tuple[list[Any], dict[str, str]]:
    """Offers that pass validity, channel, consent, eligibility and caps; and why others did not.
    ``only``: the offers a journey may carry; doing nothing is one of them only when the
    journey lists it (``no_offer``): a marketer who wrote a message step wants it sent.
    A decision is one contact on its channel if any of its slots held a real offer (one e-mail
    however many offers it carries); each offer it showed, in any slot, counts for that
    offer's own cap and suppression."""
    s, ch, catalogue = deps.settings, request.channel, deps.offers()
    silent = {o.id for o in catalogue if policy.is_no_offer(o)}
    window = ts - timedelta(days=s.cap_window_days)
    per_channel = Counter(
        show.channel
        for show in history.shows
        if show.ts >= window and any(o not in silent for o in show.offers)
    )
    by_offer: dict[str, list[tuple[str, datetime]]] = {}  # caps_ok counts one offer's shows
    for show in history.shows:
        for o in show.offers:
            by_offer.setdefault(o, []).append((o, show.ts))
    kept, dropped = [], {}
    for offer in catalogue:
        if only is not None and offer.id not in only:
            continue  # not the journey's: not a candidate at all, nor a reason worth logging
        why = (
            policy.valid_now(offer, ts)
            or policy.channel_allowed(offer, ch)
            or policy.consent_ok(offer, ch, features)
            or policy.eligible(offer, features)
            or policy.caps_ok(
                offer,
                ch,
                per_channel=per_channel,
                shows=by_offer.get(offer.id, []),
                last_response=history.last_response,
                now=ts,
                channel_caps=s.contact_caps,
            )
        )
        if why:
            dropped[offer.id] = why
        else:
            kept.append(offer)
    return kept, dropped


def score(
    offers: list[Any], features: dict[str, Any], channel: str, deps: Deps, reasons: list[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Expected incremental value per offer from the model scores. Without a model every
    offer is worth the same, so exploration alone picks (uniform over the allowed set)."""
    ids = [o.id for o in offers]
    churn, p_t, p_u = 0.0, [0.0] * len(ids), [0.0] * len(ids)
    if deps.models is None:
        reasons.append(f"models: {deps.missing.get('models', 'unavailable')}")
    elif ids:
        try:
            churn = float(deps.models.churn_risk(features))
        except Exception as exc:  # noqa: BLE001 - scores without the churn lever
            reasons.append(f"churn model: {type(exc).__name__}: {exc}")
        try:
            treated, untreated = deps.models.offer_scores(features, channel, ids)
            p_t, p_u = [float(x) for x in treated], [float(x) for x in untreated]
        except Exception as exc:  # noqa: BLE001 - all offers equal: exploration decides
            reasons.append(f"propensity model: {type(exc).__name__}: {exc}")
    s = deps.settings
    values = {
        o.id: policy.incremental_value(
            o, t, u, churn, s.churn_lever if o.id in s.retention_offers else 0.0
        )
        for o, t, u in zip(offers, p_t, p_u, strict=True)
    }
    detail = {
        "churn_risk": churn,
        "p_treated": dict(zip(ids, p_t, strict=True)),
        "p_untreated": dict(zip(ids, p_u, strict=True)),
        "value": values,
    }
    return values, detail


def explore(
    values: dict[str, float],
    features: dict[str, Any],
    request: DecideRequest,
    deps: Deps,
    reasons: list[str],
) -> dict[str, float]:
    """The final distribution over the allowed set: the bandit's, or an epsilon floor."""
    allowed = list(values)
    if deps.bandit is not None and allowed:
        try:
            # only the distribution is needed: the draw is ours, with the logged probability
            spread = getattr(deps.bandit, "distribution", None)
            args = (features, request.channel, request.context.model_dump(), allowed)
            # the models' expected incremental values: the bandit starts from their ranking
            probs = spread(*args, values) if spread else deps.bandit.choose(*args, values)[1]
            new = cold_offers(deps.bandit, allowed)
            if new:  # explored, not a fallback: the bandit still ranks the others
                reasons.append(f"cold start: bandit explores new offers {', '.join(new)}")
            return policy.normalise(probs, allowed)
        except Exception as exc:  # noqa: BLE001
            reasons.append(f"bandit: {type(exc).__name__}: {exc}")
    return policy.epsilon_greedy(values, deps.settings.epsilon)


def decide(request: DecideRequest, deps: Deps, *, record: bool = True) -> DecideResponse:
    """One decision, written to the ledger (committed) before it is returned; a journey's
    banner waiting for this visit is shown (and consumed) by it."""
    if not record:
        return plan(request, deps)[0]
    known = know(request, deps)  # once: a plan made again reuses what was read
    request, scope = with_banner(request, journey_banner(request, known, deps))
    return commit(lambda: plan(request, deps, known, scope), deps.ledger)[0]


def journey_banner(request: DecideRequest, known: Known, deps: Deps) -> JourneyVisit | None:
    """The journey banner this visit shows, claimed; None (and no lookup at all) when the
    visit cannot show one."""
    if known.customer_id is None or not journey_banners.possible(deps, request.channel):
        return None
    return journey_banners.take(known.customer_id, request.channel, deps)


def with_banner(
    request: DecideRequest, banner: JourneyVisit | None
) -> tuple[DecideRequest, Scope | None]:
    """The visit as the banner's decision: its journey step in the context, scoped to the
    journey (its offers, its experiment, the decision id the banner was claimed with)."""
    if banner is None:
        return request, None
    context = request.context.model_copy(update={"journey": banner.context})
    scope = Scope(banner.experiment, frozenset(banner.offers), banner.holdout_share,
                  banner.decision_id)  # fmt: skip
    return request.model_copy(update={"context": context}), scope


def plan(
    request: DecideRequest, deps: Deps, known: Known | None = None, scope: Scope | None = None
) -> tuple[DecideResponse, DecisionRow]:
    """The decision and its ledger row, not yet written (the service commits rows in groups).
    ``known`` carries identity and features already read (the service batches feature reads).
    ``scope``: a journey step's restriction (its offers, its experiment and holdout share)."""
    ts = deps.clock()
    if known is None:
        known = know(request, deps)
    cid, reasons = known.customer_id, list(known.reasons)  # a plan made again starts afresh
    experiment = scope.experiment if scope else experiment_of(request, deps)
    arm = assign_holdout(
        cid,
        request.identifiers(),
        experiment,
        deps.assigner,
        deps.graph,
        deps.settings,
        ts,
        experiment_share=scope.holdout_share if scope else None,
    )
    features = policy.profile_fields(known.features)
    if deps.catalog is None:
        reasons.append(f"catalog: {deps.missing.get('catalog', 'unavailable')}")
    since = ts - timedelta(days=HISTORY_DAYS)
    history = deps.ledger.contact_history(cid, since) if cid is not None else History([], None)
    pending = history.pending()
    offers, dropped = allowed_offers(
        request, history, features, deps, ts, scope.offers if scope else None
    )
    values, detail = score(offers, features, request.channel, deps, reasons)
    holdout = arm is not None and arm.arm == "holdout"
    probs = {} if holdout else explore(values, features, request, deps, reasons)
    fallback = any(not r.startswith("cold start") for r in reasons)
    chosen = policy.sample(probs, deps.rng) if probs else None
    shown = policy.slot_probabilities(chosen, probs, values, request.max_offers) if chosen else []
    by_id = {o.id: o for o in offers}
    ranked = [_ranked(by_id[o], values[o], p, k, detail) for k, (o, p) in enumerate(shown)]
    versions = deps.model_versions()
    row = DecisionRow(
        decision_id=(scope and scope.decision_id) or uuid.uuid4().hex,
        ts=ts,
        customer_id=cid,
        channel=request.channel,
        context=request.context.model_dump(exclude_defaults=True),
        experiment=experiment,
        arm=arm.arm if arm else "treatment",
        offer_id=chosen,
        propensity=probs.get(chosen),
        probabilities=probs,
        scores={
            **detail,
            "dropped": dropped,
            "holdout": arm.holdout if arm else None,
            "features": feature_snapshot(features),
        },  # the bandit retrains on these
        model_versions=versions,
        fallback=fallback,
        reason="; ".join(reasons)[:200],
        slots=[{"offer_id": o, "position": k, "probability": p} for k, (o, p) in enumerate(shown)],
        # what the commit checks: a plan that drew nothing (a holdout) does not depend on it
        planned_on=(
            PlannedOn(since, len(history.shows) - len(pending), pending) if cid and chosen else None
        ),
    )
    if fallback:
        # the reason is in the ledger row; a log line per request would cost more than it tells
        log.debug("fallback decision %s: %s", row.decision_id, row.reason)
    response = DecideResponse(
        decision_id=row.decision_id,
        customer_id=cid,
        experiment=experiment,
        arm=row.arm,
        offers=ranked,
        model_versions=versions,
        fallback=fallback,
        reasons=reasons,
    )
    return response, row


def _ranked(offer: Any, value: float, p: float, position: int, detail: dict) -> RankedOffer:
    oid = offer.id
    why = "chosen" if position == 0 else "runner-up"
    common = {
        "offer_id": oid,
        "name": offer.name,
        "score": round(value, 6),
        "probability": p,
        "position": position,
    }
    if policy.is_no_offer(offer):  # a model score for "nothing" is not an uplift
        reason = f"{why}: no offer is expected to add more than doing nothing"
        return RankedOffer(**common, reason=reason)
    uplift = detail["p_treated"][oid] - detail["p_untreated"][oid]
    return RankedOffer(
        **common,
        creative={"headline": offer.headline, "body": offer.body, "cta": offer.cta},
        reason=f"{why}: expected incremental value {value:.3f} (uplift {uplift:+.3f})",
    )
