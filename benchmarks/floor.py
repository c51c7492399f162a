"""The benchmark floor: an empty BentoML endpoint with the same framework fixes as the service
(timer cancelled, ``gc.freeze()`` after start-up), so the ratio measures our pipeline only."""

from __future__ import annotations

import gc
from typing import Any

import bentoml

from nextbest.settings import get_settings
from serving.bentofix import cancel_timeout_timers

cancel_timeout_timers()


@bentoml.service(
    name="floor",
    workers=get_settings().workers,  # the same worker count as the service it is compared with
    traffic={"timeout": 10},
    logging={"access": {"enabled": False}},
)
class Floor:
    """Answers a small JSON body with a small JSON body, doing nothing else."""

    @bentoml.on_startup
    async def _start(self) -> None:
        gc.collect()
        gc.freeze()

    @bentoml.api(route="/decide")
    async def decide(self, request: dict[str, Any], /) -> dict[str, Any]:
        return {"decision_id": "0", "offers": []}
