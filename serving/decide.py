"""The decision pipeline as one plain function: identity -> features -> holdout -> eligibility,
consent and caps -> scores -> arbitration -> exploration -> ledger row -> answer.

Each dependency may be missing or fail; the decision then falls back (cold start, catalogue
priors, epsilon-greedy) and says why, instead of failing the caller.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from record.assignment import assign_holdouts, declared
from record.ledger import LedgerError
from record.ledger_pending import MAX_PLANS, PlannedOn
from record.tables import DecisionRow, History, Show
from serving import journey_banners, policy
from serving.construct import constructor
from serving.deps import Deps
from serving.journey_banners import JourneyVisit
from serving.schemas import (
    DecideRequest,
    DecideResponse,
    RankedOffer,
    VisitContext,
    field_error,
)
from serving.stages import StageTimes
from serving.writer import commit
from training.bandit import cold_offers, feature_snapshot

__all__ = [
    "DecideRequest",
    "DecideResponse",
    "RankedOffer",
    "Scope",
    "VisitContext",
    "decide",
    "decide_many",
    "decide_outcomes",
    "plan",
    "plan_many",
]
log = logging.getLogger("nextbest.decide")
# model_construct, cheaper: every value is built here from validated parts (serving.construct)
_row, _response, _offer = (constructor(m) for m in (DecisionRow, DecideResponse, RankedOffer))
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
    known = Known(reasons=reasons)  # the reasons are appended to the caller's list
    resolve_many([request], deps, [known], verify)
    return known.customer_id


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
    """One customer's features (:func:`read_features_many` of one), a failure its reason."""
    known = Known(reasons=reasons, customer_id=cid)
    read_features_many([known], deps)
    return known.features


def know(request: DecideRequest, deps: Deps, *, verify: bool = False) -> Known:
    """Who the visitor is and their features, each with the reason it fell back, if any
    (``verify``: see :func:`resolve`)."""
    return know_many([request], deps, verify=verify)[0]


def know_many(
    requests: Sequence[DecideRequest],
    deps: Deps,
    *,
    verify: bool = False,
    times: StageTimes | None = None,
    at: Sequence[datetime] | None = None,
) -> list[Known]:
    """:func:`know` for many visitors: one identity lookup for all of them, one feature read
    for all customers found; each with the reasons :func:`know` would give it alone.
    ``at``: each request's decision time (see :func:`plan_many`)."""
    times = times if times is not None else StageTimes()
    known = [Known(reasons=[]) for _ in requests]
    with times("identity"):
        resolve_many(requests, deps, known, verify)
    with times("features"):
        read_features_many(known, deps, at)
    return known


def resolve_many(
    requests: Sequence[DecideRequest], deps: Deps, known: list[Known], verify: bool
) -> None:
    """:func:`resolve` of every request into ``known``, the graph asked once for all."""
    from features.identity import Identifiers

    asked: list[int] = []
    for i, request in enumerate(requests):
        if request.customer_id and (not verify or deps.graph is None):
            known[i].customer_id = request.customer_id
        elif not request.identifiers():
            known[i].reasons.append("cold start: anonymous visitor")
        elif deps.graph is None:
            known[i].reasons.append(f"identity: {deps.missing.get('graph', 'unavailable')}")
        else:
            asked.append(i)
    if not asked:
        return
    try:
        many = [Identifiers.model_construct(**requests[i].identifiers()) for i in asked]
        lookup_many = getattr(deps.graph, "lookup_many", None)
        if lookup_many is not None and len(many) > 1:
            found = lookup_many(many)
        else:  # one visitor: the graph's prebuilt single lookup costs less
            found = [deps.graph.lookup(x) for x in many]
    except Exception as exc:  # noqa: BLE001
        for i in asked:
            known[i].reasons.append(f"identity: {type(exc).__name__}: {exc}")
        return
    for i, cid in zip(asked, found, strict=True):
        known[i].customer_id = cid
        if cid is None:
            unknown = UNKNOWN_ID if requests[i].customer_id else "cold start: unknown visitor"
            known[i].reasons.append(unknown)


def read_features_many(
    known: list[Known], deps: Deps, at: Sequence[datetime] | None = None, *, within: bool = False
) -> None:
    """:func:`read_features` of every known customer, in one read; with ``at``, each as of its
    own time (the on-demand basket fields count from it), one row per request. ``within``: the
    service's guarded read (``FeatureReader.read_many_within``: its timeout and breaker)."""
    found = [k for k in known if k.customer_id is not None]
    if not found:
        return
    if deps.features is None:
        for k in found:
            k.reasons.append(f"features: {deps.missing.get('features', 'unavailable')}")
        return
    if at is None:
        ids = list(dict.fromkeys(k.customer_id for k in found if k.customer_id is not None))
        now: Any = deps.clock()
    else:  # a customer twice may be asked at two times: a row per request
        ids = [k.customer_id for k in found if k.customer_id is not None]
        now = [t for k, t in zip(known, at, strict=True) if k.customer_id is not None]
    try:
        if within:
            rows = deps.features.read_many_within(ids, now=now)
        elif (read_many := getattr(deps.features, "read_many", None)) is not None:
            rows = read_many(ids, now=now)
        elif at is None:
            rows = [deps.features.read(c, now=now) for c in ids]
        else:
            rows = [deps.features.read(c, now=t) for c, t in zip(ids, now, strict=True)]
    except Exception as exc:  # noqa: BLE001
        for k in found:
            k.reasons.append(f"features: {type(exc).__name__}: {exc}")
        return
    if at is not None:
        for k, row in zip(found, rows, strict=True):
            k.features = row
        return
    by_id = dict(zip(ids, rows, strict=True))
    for k in found:
        k.features = by_id[k.customer_id]


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
    # caps_ok reads this channel's count only: the other channels' shows are not counted
    per_channel: Counter[str] = Counter()
    by_offer: dict[str, list[tuple[str, datetime]]] = {}  # caps_ok counts one offer's shows
    if history.shows:  # a visitor shown nothing in the window: nothing to count
        silent = {o.id for o in catalogue if policy.is_no_offer(o)}
        window = ts - timedelta(days=s.cap_window_days)
        contacts = 0
        for show in history.shows:
            if (
                show.channel == ch
                and show.ts >= window
                and any(o not in silent for o in show.offers)
            ):
                contacts += 1
            for o in show.offers:
                by_offer.setdefault(o, []).append((o, show.ts))
        if contacts:
            per_channel[ch] = contacts
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
    return score_many([(offers, features, channel)], deps, [reasons])[0]


def score_many(
    rows: list[tuple[list[Any], dict[str, Any], str]], deps: Deps, reasons: list[list[str]]
) -> list[tuple[dict[str, float], dict[str, Any]]]:
    """:func:`score` of many visits (allowed offers, features, channel): the churn model once
    on every row, the propensity model once on every row x allowed offer. A batched call that
    fails is made again row by row, so one bad row falls back alone, with its own reason."""
    n = len(rows)
    churn, p_t, p_u = (
        [0.0] * n,
        [[0.0] * len(r[0]) for r in rows],
        [[0.0] * len(r[0]) for r in rows],
    )
    models = deps.models
    if models is None:
        why = f"models: {deps.missing.get('models', 'unavailable')}"
        for r in reasons:
            r.append(why)
    scored = [i for i, r in enumerate(rows) if r[0]] if models is not None else []
    if scored:
        feats = [rows[i][1] for i in scored]
        # one visit: the models' prebuilt one-row paths cost less (and give the same bytes)
        try:
            risks = models.churn_risks(feats).tolist() if len(scored) > 1 else None
        except Exception:  # noqa: BLE001 - row by row: each row's own reason
            risks = None
        for k, i in enumerate(scored):
            try:
                churn[i] = float(models.churn_risk(rows[i][1])) if risks is None else risks[k]
            except Exception as exc:  # noqa: BLE001 - scores without the churn lever
                reasons[i].append(f"churn model: {type(exc).__name__}: {exc}")
        ids = [[o.id for o in rows[i][0]] for i in scored]
        try:
            many = (
                models.offer_scores_many(feats, [rows[i][2] for i in scored], ids)
                if len(scored) > 1
                else None
            )
        except Exception:  # noqa: BLE001 - row by row: each row's own reason
            many = None
        for k, i in enumerate(scored):
            try:
                treated, untreated = (
                    models.offer_scores(rows[i][1], rows[i][2], ids[k]) if many is None else many[k]
                )
                p_t[i], p_u[i] = [float(x) for x in treated], [float(x) for x in untreated]
            except Exception as exc:  # noqa: BLE001 - all offers equal: exploration decides
                reasons[i].append(f"propensity model: {type(exc).__name__}: {exc}")
    s, prices = deps.settings, deps.prices
    retention, lever = s.retention_offers, s.churn_lever
    out = []
    for i, (offers, feats, channel) in enumerate(rows):
        clv = feats.get("clv_12m") if feats else None  # profile_v2; None: the flat figure
        values = {
            o.id: policy.incremental_value(
                o, t, u, churn[i], lever if o.id in retention else 0.0, clv
            )
            for o, t, u in zip(offers, p_t[i], p_u[i], strict=True)
        }
        ids_i = [o.id for o in offers]
        detail: dict[str, Any] = {
            "churn_risk": churn[i],
            "p_treated": dict(zip(ids_i, p_t[i], strict=True)),
            "p_untreated": dict(zip(ids_i, p_u[i], strict=True)),
        }
        if prices is not None:  # the limits' dual prices: what showing it uses up is worth
            charge = {o: float(prices.charge(o, channel)) for o in ids_i}
            values = {o: v - charge[o] for o, v in values.items()}
            detail["price"] = charge
        detail["value"] = values
        out.append((values, detail))
    return out


def explore(
    values: dict[str, float],
    features: dict[str, Any],
    request: DecideRequest,
    deps: Deps,
    reasons: list[str],
    p_treated: dict[str, float] | None = None,
) -> dict[str, float]:
    """The final distribution over the allowed set: the bandit's, or an epsilon floor.
    ``p_treated``: the uplift model's conversion probability of each offer if shown."""
    allowed = list(values)
    if deps.bandit is not None and allowed:
        try:
            # only the distribution is needed: the draw is ours, with the logged probability
            spread = getattr(deps.bandit, "distribution", None)
            # with the models' expected incremental values (and treated rates, when known):
            # the bandit starts from their ranking
            args = (features, request.channel, request.context.model_dump(), allowed, values,
                    p_treated)  # fmt: skip
            probs = spread(*args) if spread else deps.bandit.choose(*args)[1]
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
    return plan_many([request], deps, None if known is None else [known], [scope])[0]


@dataclass
class _Visit:
    """One request on its way through :func:`plan_many`."""

    request: DecideRequest
    known: Known
    scope: Scope | None
    experiment: str
    reasons: list[str]
    arm: Any = None
    features: dict[str, Any] = field(default_factory=dict)
    history: History | None = None
    offers: list[Any] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    probs: dict[str, float] = field(default_factory=dict)
    ts: datetime | None = None  # its decision time (``plan_many``'s ``at``, else the clock's)


def plan_many(
    requests: Sequence[DecideRequest],
    deps: Deps,
    known: Sequence[Known] | None = None,
    scopes: Sequence[Scope | None] | None = None,
    times: StageTimes | None = None,
    at: Sequence[datetime] | None = None,
) -> list[tuple[DecideResponse, DecisionRow]]:
    """Decisions and their ledger rows for many requests, not yet written, each stage done
    once for all of them: one identity lookup, one feature read (for the requests without
    ``known``), one contact-history query, each model called once on every row. The answers
    equal planning the requests one after another, each held as pending before the next:
    a customer twice in the batch is planned the second time on a history that counts the
    first's show, and the random draws happen in request order.
    ``times``: each stage's seconds (``serving.stages``; ``bandit`` includes the draw).
    ``at``: each request's decision time, in time order (a replay of visits that happened
    apart, decided together): its features, validity, caps and row are as of it; None is
    ``deps.clock()`` for all."""
    with _no_gc():
        return _plan_many(requests, deps, known, scopes, times, at)


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector off while a batch is planned: a batch holds thousands of
    live objects, and each collection it triggers walks all of them and the process's heap
    (measured on 2,000 decisions beside a 200,000-object heap, interleaved: ~0.25 ms a
    decision less, in each of 5 pairs). What a batch frees goes by reference counts.
    Process-wide, yet safe for the service's other threads: only their garbage cycles wait,
    for one batch; only a caller that found it enabled enables it again, so concurrent
    batches end with it enabled (at worst one re-enables it under another: slower, not wrong)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _plan_many(
    requests: Sequence[DecideRequest],
    deps: Deps,
    known: Sequence[Known] | None,
    scopes: Sequence[Scope | None] | None,
    times: StageTimes | None,
    at: Sequence[datetime] | None = None,
) -> list[tuple[DecideResponse, DecisionRow]]:
    times = times if times is not None else StageTimes()
    n = len(requests)
    scopes = [None] * n if scopes is None else list(scopes)
    if len(scopes) != n or (known is not None and len(known) != n):
        raise ValueError(f"plan_many: {n} requests, but {len(scopes)} scopes / known")
    if at is not None and len(at) != n:
        raise ValueError(f"plan_many: {n} requests, but {len(at)} times (at)")
    stamps = [deps.clock()] * n if at is None else list(at)
    ts = min(stamps, default=deps.clock())
    experiments = [
        s.experiment if s else experiment_of(r, deps) for r, s in zip(requests, scopes, strict=True)
    ]
    if known is None:
        known = know_many(requests, deps, times=times, at=at)
    visits = [
        _Visit(r, k, sc, e, list(k.reasons), ts=t)  # a plan made again starts afresh
        for r, k, sc, e, t in zip(requests, known, scopes, experiments, stamps, strict=True)
    ]
    since = ts - timedelta(days=HISTORY_DAYS)
    with times("eligibility"):
        no_catalog = (
            f"catalog: {deps.missing.get('catalog', 'unavailable')}"
            if deps.catalog is None
            else None
        )
        arms = assign_holdouts(
            [
                (
                    v.known.customer_id,
                    v.request.identifiers(),
                    v.experiment,
                    v.scope.holdout_share if v.scope else None,
                )
                for v in visits
            ],
            deps.assigner,
            deps.graph,
            deps.settings,
            ts,
        )
        for v, arm in zip(visits, arms, strict=True):
            v.arm = arm
            v.features = policy.profile_fields(v.known.features)
            if no_catalog:
                v.reasons.append(no_catalog)
        cids = [v.known.customer_id for v in visits if v.known.customer_id is not None]
        histories = deps.ledger.contact_histories(cids, since) if cids else {}
    versions = deps.model_versions()
    out: list[tuple[DecideResponse, DecisionRow]] = []
    for part in _segments(visits):
        out += _plan_part(part, deps, since, histories, versions, times)
    return out


def _segments(visits: list[_Visit]) -> list[list[_Visit]]:
    """Consecutive runs of visits with no customer twice: a customer's second visit must be
    planned after the first is drawn (it counts that show), so it starts the next run."""
    parts: list[list[_Visit]] = []
    seen: set[str] = set()
    current: list[_Visit] = []
    for v in visits:
        cid = v.known.customer_id
        if cid is not None and cid in seen:
            parts.append(current)
            current, seen = [], set()
        if cid is not None:
            seen.add(cid)
        current.append(v)
    if current:
        parts.append(current)
    return parts


def _plan_part(
    visits: list[_Visit],
    deps: Deps,
    since: datetime,
    histories: dict[str, History],
    versions: dict[str, str],
    times: StageTimes,
) -> list[tuple[DecideResponse, DecisionRow]]:
    """Eligibility, scores, exploration and the draw of visits of distinct customers."""
    empty = History([], None)
    with times("eligibility"):
        for v in visits:
            cid = v.known.customer_id
            v.history = histories[cid] if cid is not None else empty
            v.offers, v.dropped = allowed_offers(
                v.request, v.history, v.features, deps, v.ts, v.scope.offers if v.scope else None
            )
    with times("scoring"):
        rows = [(v.offers, v.features, v.request.channel) for v in visits]
        for v, (values, detail) in zip(
            visits, score_many(rows, deps, [v.reasons for v in visits]), strict=True
        ):
            v.values, v.detail = values, detail
    out = []
    with times("bandit"):
        for v in visits:
            if v.arm is None or v.arm.arm != "holdout":
                v.probs = explore(v.values, v.features, v.request, deps, v.reasons,
                                  v.detail.get("p_treated"))  # fmt: skip
        for v in visits:
            out.append(_draw(v, deps, since, versions))
    return out


def _draw(
    v: _Visit, deps: Deps, since: datetime, versions: dict[str, str]
) -> tuple[DecideResponse, DecisionRow]:
    """The draw, the ledger row and the answer of one planned visit; a show is added to the
    customer's history, for their next visit in the same batch."""
    request, cid, reasons, probs, arm = v.request, v.known.customer_id, v.reasons, v.probs, v.arm
    ts = v.ts
    history = v.history if v.history is not None else History([], None)
    pending = history.pending()
    fallback = any(not r.startswith("cold start") for r in reasons)
    chosen = policy.sample(probs, deps.rng) if probs else None
    shown = policy.slot_probabilities(chosen, probs, v.values, request.max_offers) if chosen else []
    by_id = {o.id: o for o in v.offers}
    ranked = [_ranked(by_id[o], v.values[o], p, k, v.detail) for k, (o, p) in enumerate(shown)]
    decision_id = (v.scope and v.scope.decision_id) or deps.new_id()
    # model_construct: every value is built here from validated parts (no validation per row)
    row = _row(
        decision_id=decision_id,
        ts=ts,
        customer_id=cid,
        channel=request.channel,
        context=request.context.model_dump(exclude_defaults=True),
        experiment=v.experiment,
        arm=arm.arm if arm else "treatment",
        offer_id=chosen,
        propensity=probs.get(chosen),
        probabilities=probs,
        scores={
            **v.detail,
            "dropped": v.dropped,
            "holdout": arm.holdout if arm else None,
            "features": feature_snapshot(v.features),
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
    if cid is not None and chosen is not None:  # as if held pending, for the next visit
        history.shows.append(Show(row.channel, row.shown(), ts, decision_id))
    if fallback:
        # the reason is in the ledger row; a log line per request would cost more than it tells
        log.debug("fallback decision %s: %s", row.decision_id, row.reason)
    response = _response(
        decision_id=row.decision_id,
        customer_id=cid,
        experiment=v.experiment,
        arm=row.arm,
        offers=ranked,
        model_versions=versions,
        fallback=fallback,
        reasons=reasons,
    )
    return response, row


Outcome = DecideResponse | Exception  # one request's answer, or why it has none


def decide_many(
    requests: Sequence[DecideRequest],
    deps: Deps,
    times: StageTimes | None = None,
    at: Sequence[datetime] | None = None,
) -> list[DecideResponse]:
    """Many decisions planned together and committed in one transaction before they are
    returned (durable); the rows whose plan went stale (another writer showed the customer
    something meanwhile) are planned again, as :func:`serving.writer.commit` does for one.
    Journey banners waiting for these visits are shown by them, as in :func:`decide`.
    Any refusal (an undeclared campaign, a row the database refuses) fails the whole call.
    ``at``: each request's decision time (see :func:`plan_many`)."""
    return decide_outcomes(requests, deps, times=times, at=at)  # type: ignore[return-value]


def decide_outcomes(
    requests: Sequence[DecideRequest],
    deps: Deps,
    *,
    verify: bool = False,
    within: bool = False,
    isolate: bool = False,
    times: StageTimes | None = None,
    at: Sequence[datetime] | None = None,
) -> list[Outcome]:
    """The one batched decide path (:func:`decide_many`, the service's decision batcher):
    identities in one lookup, features in one read, journey banners claimed, then planned
    together (:func:`plan_many`) and committed in one transaction, the stale rows planned
    again. ``verify``: see :func:`resolve` (a channel's requests). ``within``: the guarded
    feature read (see :func:`read_features_many`). ``isolate``: a request refused on its own
    (an undeclared campaign, a row the database refuses, a history that never settles) gets
    its exception in its place and the others are decided; without it the first refusal is
    raised, before any banner is claimed or row written. A store failure always raises.
    ``at``: each request's decision time (see :func:`plan_many`)."""
    times = times if times is not None else StageTimes()
    n = len(requests)
    if at is not None and len(at) != n:
        raise ValueError(f"decide_many: {n} requests, but {len(at)} times (at)")
    outcomes: list[Outcome | None] = [None] * n
    for i, request in enumerate(requests):  # the 400 of this one alone, before any side effect
        try:
            experiment_of(request, deps)
        except ValidationError as exc:
            if not isolate:
                raise
            outcomes[i] = exc
    known = [Known(reasons=[]) for _ in requests]
    with times("identity"):
        resolve_many(requests, deps, known, verify)
    with times("features"):
        read_features_many(known, deps, at, within=within)
    todo = [i for i in range(n) if outcomes[i] is None]
    scoped: dict[int, tuple[DecideRequest, Scope | None]] = {}
    with times("eligibility"):  # banners are read where the contact history is
        for i in todo:
            scoped[i] = with_banner(requests[i], journey_banner(requests[i], known[i], deps))
    for _ in range(MAX_PLANS):
        if not todo:
            break
        planned = plan_many(
            [scoped[i][0] for i in todo],
            deps,
            [known[i] for i in todo],
            [scoped[i][1] for i in todo],
            times,
            None if at is None else [at[i] for i in todo],
        )
        rows = [row for _, row in planned]
        with times("ledger"):
            stale, refused = _commit(rows, deps, isolate)
        why = {id(row): err for row, err in refused}
        stale_ids = {id(row) for row in stale}
        again = []
        for i, (response, row) in zip(todo, planned, strict=True):
            if id(row) in stale_ids:
                again.append(i)
            else:
                outcomes[i] = why.get(id(row), response)
        todo = again
    if todo and not isolate:
        raise LedgerError(
            f"customers {', '.join(str(known[i].customer_id) for i in todo)}: "
            f"history kept changing over {MAX_PLANS} plans"
        )
    for i in todo:
        cid = known[i].customer_id
        outcomes[i] = LedgerError(f"customer {cid}: history kept changing over {MAX_PLANS} plans")
    return [o if o is not None else LedgerError("not decided") for o in outcomes]


def _commit(
    rows: list[DecisionRow], deps: Deps, isolate: bool
) -> tuple[list[DecisionRow], list[tuple[DecisionRow, Exception]]]:
    """Commit planned rows in one transaction, held as pending meanwhile (other plans of this
    process count them); the stale rows and (``isolate``) the refused ones, with why."""
    ledger = deps.ledger
    for row in rows:
        ledger.pending.hold(row)
    try:
        if isolate:
            stale, refused = ledger.record_decisions_isolated(rows)
        else:
            stale, refused = ledger.record_decisions(rows), []
    except Exception:
        ledger.pending.release(rows, failed=rows)
        raise
    ledger.pending.release(rows, failed=stale + [r for r, _ in refused])
    return stale, list(refused)


def _ranked(offer: Any, value: float, p: float, position: int, detail: dict) -> RankedOffer:
    """The reason says how the offer got its place. The first is drawn, by the bandit or
    epsilon-greedy, and may rank low on the uplift model's value (exploration, or a reward the
    bandit learned): a reason claiming arbitration chose it would mislead the agent reading it.
    The others follow it by expected incremental value."""
    oid = offer.id
    why = f"drawn with probability {p:.2f}" if position == 0 else "next by expected value"
    common = {
        "offer_id": oid,
        "name": offer.name,
        "score": round(value, 6),
        "probability": p,
        "position": position,
    }
    if policy.is_no_offer(offer):  # a model score for "nothing" is not an uplift
        reason = f"{why}: no offer (adds nothing, by definition)"
        return _offer(**common, creative={}, reason=reason)
    uplift = detail["p_treated"][oid] - detail["p_untreated"][oid]
    return _offer(
        **common,
        creative={"headline": offer.headline, "body": offer.body, "cta": offer.cta},
        reason=f"{why}: expected incremental value {value:.3f} (uplift {uplift:+.3f})",
    )
