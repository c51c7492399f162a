"""The thin BentoML service: HTTP in, the plain functions of ``serving.decide`` / ``actions`` out.

Run with ``nextbest serve`` (or ``bentoml serve serving.service:Nextbest``). Two measured
fixes from the architecture notes apply: the timeout middleware's timer is cancelled when a
request ends (``serving.bentofix``), and ``gc.freeze()`` after start-up keeps the long-lived
objects out of every later collection. The bandit learns in a process of its own
(``serving.learner_process``, started by ``nextbest serve``); each worker swaps in the policy
it publishes (``serving.policy_follow``) and never learns itself.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Callable
from typing import Any

import bentoml
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from features.schema import CHANNELS
from journeys.definition import OUTBOUND_CHANNELS
from nextbest.db import bound_silence
from nextbest.quiet import quiet_dependencies
from nextbest.settings import development_secrets_error, get_settings
from serving import (
    actions,
    admin,
    journey_defs,
    journey_intents,
    journey_schedule,
    openapi,
    outbox,
    reports,
)
from serving.auth import ApiGuard
from serving.bentofix import (
    MetricLabels,
    bounded_metric_labels,
    cancel_timeout_timers,
    quiet_client_errors,
)
from serving.console import pages as console_pages
from serving.decide import DecideRequest, DecideResponse, experiment_of
from serving.decision_batcher import DecisionBatcher
from serving.deps import Deps, load_deps, pinned_models, price_refresher
from serving.policy_follow import PolicyFollower
from serving.run import bound_host
from serving.schemas import batch_request, field_error
from serving.stage_metrics import stage_metrics
from serving.unavailable import ledger_guard, route_handlers
from serving.writer import WalCheckpointer

log = logging.getLogger("nextbest.service")
SETTINGS = get_settings()
_HOST = bound_host(sys.argv)
if _HOST is not None and (_REFUSED := development_secrets_error(SETTINGS, _HOST)):
    # a `bentoml serve` by hand (or of a Bento) refuses as `nextbest serve` does, before binding
    print(f"error: {_REFUSED}", file=sys.stderr)
    raise SystemExit(2)
PINNED = pinned_models(SETTINGS)
DecideBatch = batch_request(SETTINGS.max_batch_decisions)
DECISION_BYTES = 4096  # a decision request is well under this (see max_body_bytes)


cancel_timeout_timers()
bound_silence()  # a PostgreSQL server silent mid-request for seconds is hung: a 503, not a hang
quiet_client_errors()  # a 400 is one WARNING line (serving.auth), not an ERROR traceback
quiet_dependencies()  # before the @bentoml.api models below: BentoML's own deprecations
# one metrics series per route, not one per customer id or scanned path (issue 15)
METRIC_TEMPLATES = {
    "/profile/": "/profile/{customer_id}",
    "/journeys/": "/journeys/{action}",
    "/promote/": "/promote/{model}",
    "/static_content/": "/static_content/{path}",
    "/console/customer/": "/console/customer/{customer_id}",
    "/console/static/": "/console/static/{path}",
    "/console/models/": "/console/models/{model}",
}
ROUTES = (
    "/decide",
    "/decide/batch",
    "/outcome",
    "/events",
    "/erase",
    "/outbox",
    "/reports",
    "/reports/refresh",
)
bounded_metric_labels(MetricLabels(METRIC_TEMPLATES, (*ROUTES, "/", "/docs.json", "/schema.json")))


class _State:
    deps: Deps | None = None

    def health(self) -> dict[str, Any]:
        return self.deps.health() if self.deps else {"status": "starting"}


STATE = _State()


async def _profile(request: Request) -> JSONResponse:
    channel = request.query_params.get("channel", "call_centre")
    if channel not in CHANNELS:
        return JSONResponse(
            {"error": f"channel: unknown channel {channel!r}", "field": "channel"}, 400
        )
    view = await asyncio.to_thread(
        actions.profile, request.path_params["customer_id"], STATE.deps, channel
    )
    return JSONResponse(view.model_dump(mode="json"))


async def _outbox(request: Request) -> JSONResponse:
    channel = request.query_params.get("channel", "")
    if channel not in OUTBOUND_CHANNELS:
        msg = f"channel: must be one of {', '.join(OUTBOUND_CHANNELS)}, got {channel!r}"
        return JSONResponse({"error": msg, "field": "channel"}, 400)
    peek = request.query_params.get("peek", "false").lower()
    if peek not in ("true", "false"):  # "peek=null" claimed the messages it meant to look at
        msg = f"peek: must be true or false, got {peek!r}"
        return JSONResponse({"error": msg, "field": "peek"}, 400)
    claim = peek == "false"
    return JSONResponse({"messages": outbox.pending(STATE.deps, channel, claim=claim)})


async def _journey_action(request: Request) -> JSONResponse:
    """``POST /journeys/{end|pause|resume}`` with ``{"customer_id", "journey", "reason"}``: an
    agent or a clerk ends or pauses a customer's journey (a channel key, like the profile)."""
    from serving.journey_agent import JourneyAction, act

    # the edge (serving.auth, JSON_PATHS) has refused a body that is not JSON
    req = JourneyAction.model_validate(await request.json())
    done = await asyncio.to_thread(act, request.path_params["action"], req, STATE.deps)
    return JSONResponse(done)


reads = Starlette(
    routes=[
        Route("/profile/{customer_id}", _profile, methods=["GET"]),
        Route("/journeys/{action}", _journey_action, methods=["POST"]),
        Route("/outbox", _outbox, methods=["GET"]),
        *admin.routes(lambda: STATE.deps),
        *console_pages.routes(lambda: STATE.deps),  # the people's pages (issue 19)
        *openapi.routes(lambda: Nextbest.openapi_spec.asdict()),  # BentoML's, corrected
    ],
    exception_handlers=route_handlers(),  # 4xx naming the field, the ledger down a 503
)


@bentoml.asgi_app(reads, path="/")
@bentoml.service(
    name="nextbest",
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.request_timeout},
    logging={"access": {"enabled": False}},
)
class Nextbest:
    """One decision brain behind every channel."""

    # Pinned at class scope so a built Bento carries the promoted models (None: not promoted;
    # decisions then fall back). Loading stays in ``load_deps``: ``name:latest`` is these.
    churn_model = PINNED.get("churn")
    propensity_model = PINNED.get("propensity")
    bandit_model = PINNED.get("bandit")

    def __init__(self) -> None:
        self.deps = load_deps(get_settings())
        self.checkpointer = WalCheckpointer(self.deps.ledger.engine)
        # here, in the worker: BentoML's multi-process metrics directory is set by now
        self.batcher = DecisionBatcher(self.deps, observe=stage_metrics().observe)
        STATE.deps = self.deps
        # the learner process learns; this worker swaps in what it publishes
        self.follower = self.deps.learner = PolicyFollower(self.deps)
        self._background: list[asyncio.Task] = []
        self._journeys_synced = False

    @bentoml.on_startup
    async def _start(self) -> None:
        s = self.deps.settings
        self._background = [
            asyncio.create_task(
                self._every(s.abandon_scan_seconds, self._scan, "abandoned-basket scan")
            ),
            asyncio.create_task(self.follower.run()),
            asyncio.create_task(
                self._every(s.abandon_scan_seconds, self._resume_erasures, "erasure resume")
            ),
        ]
        builder = reports.builder_for(s)  # a report build process when one is due
        await asyncio.to_thread(builder.tick)  # the first at once: none may exist yet
        self._background.append(
            asyncio.create_task(
                self._every(reports.tick_seconds(s), builder.tick, "report builder")
            )
        )
        if s.journey_runner:
            self._background.append(
                asyncio.create_task(
                    self._every(s.journey_poll_seconds, self._journeys, "journey runner")
                )
            )
        self.checkpointer.start()  # WAL checkpoints off the decisions' commits
        self.prices = price_refresher(self.deps).start()  # outbound runs' limit prices
        gc.collect()
        gc.freeze()  # start-up objects (models, catalogue, BentoML) leave the GC's generations

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        for task in self._background:
            task.cancel()
        reports.builder_for(self.deps.settings).stop()
        self.deps.assigner.flush()  # holdout draws still waiting for their group write
        self.checkpointer.stop()
        if prices := getattr(self, "prices", None):
            prices.stop()
        self.batcher.close()

    async def _every(self, seconds: float, job: Callable[[], str | None], what: str) -> None:
        """``job`` in a thread every ``seconds`` while the service runs, off the loop that
        decides; a failure is logged and the next round retries.
        ``job`` returns a line worth logging, if any."""
        while True:
            await asyncio.sleep(seconds)
            try:
                done = await asyncio.to_thread(job)
            except Exception:  # noqa: BLE001 - the next round retries
                log.exception("%s failed", what)
            else:
                if done:
                    log.info("%s", done)

    def _scan(self) -> str | None:
        """Abandoned baskets become outbound decisions (``serving.outbox``) unless the
        abandoned_basket journey is active; with no journey runner, due intent entries
        enter their journeys here, and scheduled triggers are swept when a sweep is due."""
        queued = outbox.scan_abandoned(self.deps)
        entered = 0
        if not self.deps.settings.journey_runner:  # else the runner's round enters them
            at = self.deps.clock()
            entered = journey_intents.enter_due_intents(self.deps, at)
            entered += journey_schedule.maybe_sweep(self.deps, at)
        done = [f"abandoned baskets: {len(queued)} messages queued"] if queued else []
        done += [f"journey entries: {entered} customers entered journeys"] if entered else []
        return "; ".join(done) or None

    def _journeys(self) -> str | None:
        """Due journey steps (``serving.journey_runner``): the active journeys' versions are
        stored once, due intent entries enter (``serving.journey_intents``), scheduled
        triggers are swept every ``journey_schedule_minutes`` (``serving.journey_schedule``),
        then every due step runs, one transaction each, until none is due."""
        if not self._journeys_synced:
            journeys = journey_defs.active(self.deps.settings).values()
            journey_defs.sync_versions(journeys, self.deps.ledger.engine)
            self._journeys_synced = True
        entered, steps = journey_intents.run_round(self.deps)
        done = [f"{entered} customers entered on intent or schedule"] if entered else []
        done += [f"{steps} steps taken"] if steps else []
        return f"journeys: {'; '.join(done)}" if done else None

    def _resume_erasures(self) -> str | None:
        """Erasures cut short (a store down, a crash) are finished (``serving.erasure``), and
        this worker forgets its in-memory identifiers after any worker's erasure."""
        from serving.erasure import resume_pending

        results = resume_pending(self.deps)
        return f"erasures resumed: {[r['status'] for r in results]}" if results else None

    @bentoml.api(route="/decide")
    @ledger_guard
    async def decide(self, request: DecideRequest, /) -> DecideResponse:
        # decided in a batch with the requests that queue meanwhile, off the loop
        # (serving.decision_batcher): the loop only parses, queues and answers
        return await self.batcher.decide(request)

    @bentoml.api(route="/decide/batch")
    @ledger_guard
    async def decide_batch(self, batch: DecideBatch, /) -> list[DecideResponse]:  # type: ignore[valid-type]
        """Up to ``max_batch_decisions`` decisions, answered in order. Every item is checked
        before any is decided: a bad one is the 400 naming ``requests[i].<field>``, and
        nothing of the batch is logged."""
        requests: list[DecideRequest] = batch.requests  # type: ignore[attr-defined]
        for i, request in enumerate(requests):
            try:
                experiment_of(request, self.deps)
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                campaign = request.context.campaign
                raise field_error(f"requests[{i}].context.campaign", reason, campaign) from None
        return await self.batcher.decide_all(requests)

    @bentoml.api(route="/outcome")
    @ledger_guard
    async def outcome(self, request: actions.OutcomeRequest, /) -> actions.OutcomeResponse:
        return await asyncio.to_thread(actions.record_outcome, request, self.deps)

    @bentoml.api(route="/events")
    @ledger_guard
    async def events(self, event: dict[str, Any], /) -> dict[str, Any]:
        # off the loop: a feature push costs milliseconds and must not stall /decide
        return await asyncio.to_thread(actions.ingest, event, self.deps)

    @bentoml.api(route="/erase")
    @ledger_guard
    async def erase(self, request: actions.EraseRequest, /) -> dict[str, Any]:
        result = await asyncio.to_thread(actions.erase, request, self.deps)
        if result.get("status") != "done":  # a store failed: say what is left; a retry ends it
            return JSONResponse(result, 503, headers={"Retry-After": "60"})  # type: ignore[return-value]
        return result


Nextbest.add_asgi_middleware(
    ApiGuard,
    channel_keys=SETTINGS.channel_keys,
    admin_keys=SETTINGS.admin_keys,
    health=STATE.health,
    max_body_bytes=SETTINGS.max_body_bytes,
    body_limits={
        "/decide/batch": max(SETTINGS.max_body_bytes, SETTINGS.max_batch_decisions * DECISION_BYTES)
    },
)
