"""The comparison for /decide's batching (issue 14): the same pipeline behind BentoML's adaptive
batching (``@bentoml.api(batchable=True, max_batch_size=..., max_latency_ms=...)``) instead of
the service's own ``DecisionBatcher``. ``nextbest bench decide --adaptive`` measures it beside
the floor and /decide.

BentoML's CorkDispatcher merges the lists of concurrent calls into one call, so the API takes
a list: a caller sends ``{"requests": [<decide request>]}``, not /decide's single object. It
runs the merged batch in BentoML's thread pool; here that call is ``DecisionBatcher.decide_now``,
the very batch the service decides, so only the batching differs.
"""

from __future__ import annotations

import gc

import bentoml

from nextbest.settings import get_settings
from serving.auth import ApiGuard
from serving.bentofix import cancel_timeout_timers
from serving.decision_batcher import DecisionBatcher
from serving.deps import load_deps
from serving.schemas import DecideRequest, DecideResponse

MAX_LATENCY_MS = 5  # "a few ms", as the issue asks
MAX_BATCH = 256  # the service's own batcher's default
SETTINGS = get_settings()
cancel_timeout_timers()


@bentoml.service(
    name="adaptive",
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.request_timeout},
    logging={"access": {"enabled": False}},
)
class Adaptive:
    """/decide's pipeline, batched by BentoML's dispatcher."""

    def __init__(self) -> None:
        self.batcher = DecisionBatcher(load_deps(SETTINGS))

    @bentoml.on_startup
    async def _start(self) -> None:
        gc.collect()
        gc.freeze()

    @bentoml.api(
        route="/decide", batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS
    )
    def decide(self, requests: list[DecideRequest]) -> list[DecideResponse]:
        outcomes = self.batcher.decide_now(requests)
        for outcome in outcomes:  # one refused request fails every call merged into the batch
            if isinstance(outcome, Exception):
                raise outcome
        return outcomes  # type: ignore[return-value]


Adaptive.add_asgi_middleware(
    ApiGuard,
    channel_keys=SETTINGS.channel_keys,
    admin_keys=SETTINGS.admin_keys,
    max_body_bytes=SETTINGS.max_body_bytes,
)
