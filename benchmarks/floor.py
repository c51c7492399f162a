"""The benchmark floor: an empty BentoML endpoint with the same framework fixes as the service
(timer cancelled, ``gc.freeze()`` after start-up), so the ratio measures our pipeline only.

It takes and returns the service's own pydantic models. An endpoint typed ``dict`` would be
no floor: BentoML 1.4 wraps a ``dict`` in a root model and rebuilds its JSON schema (a new
``TypeAdapter``) twice per request, measured at 38% of such a worker's CPU, which made the
floor slower than /decide's own request handling.
"""

from __future__ import annotations

import gc

import bentoml

from nextbest.settings import get_settings
from serving.bentofix import cancel_timeout_timers
from serving.schemas import DecideRequest, DecideResponse

cancel_timeout_timers()


@bentoml.service(
    name="floor",
    workers=get_settings().workers,  # the same worker count as the service it is compared with
    traffic={"timeout": 10},
    logging={"access": {"enabled": False}},
)
class Floor:
    """Parses a decision request and answers an empty decision, doing nothing else."""

    @bentoml.on_startup
    async def _start(self) -> None:
        gc.collect()
        gc.freeze()

    @bentoml.api(route="/decide")
    async def decide(self, request: DecideRequest, /) -> DecideResponse:
        return DecideResponse(
            decision_id="0",
            customer_id=request.customer_id,
            experiment="floor",
            arm="treatment",
            offers=[],
            model_versions={},
            fallback=False,
        )
