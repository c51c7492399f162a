"""Where decisions spend their time, on the service's Prometheus endpoint (``GET /metrics``).

``nextbest_decision_stage_seconds{stage=...}`` is observed once per batch with the batch's
stage times (``serving.stages``): what every decision of that batch waited for that stage;
``nextbest_decision_batch_size`` says how many decisions shared it. An operator reads the
sums' rates per stage to see where time goes, without a profiler.

``prometheus_client`` is imported when the first histogram is made, in the worker, as
BentoML's docs ask for custom metrics: BentoML sets ``PROMETHEUS_MULTIPROC_DIR`` after the
service module is imported, and a client imported before it would keep its samples in
process, where BentoML's multi-process ``/metrics`` never sees them.
"""

from __future__ import annotations

import functools
from typing import Any

from serving.stages import STAGES, StageTimes

STAGE_SECONDS = "nextbest_decision_stage_seconds"
BATCH_SIZE = "nextbest_decision_batch_size"
# 50 us to 10 s: a stage of a lone decision is tens of microseconds, a hung store seconds
STAGE_BUCKETS = (
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


class StageMetrics:
    """``metrics.observe(times, size)`` after each batch (``DecisionBatcher``'s ``observe``)."""

    def __init__(self) -> None:
        import prometheus_client as prom  # here, not at import: see the module's docstring

        self.seconds: Any = prom.Histogram(
            STAGE_SECONDS,
            "Seconds a batch of decisions spent in each pipeline stage (once per batch)",
            labelnames=["stage"],
            buckets=STAGE_BUCKETS,
        )
        self.size: Any = prom.Histogram(
            BATCH_SIZE, "Decisions decided together in one batch", buckets=SIZE_BUCKETS
        )
        self._by_stage = {stage: self.seconds.labels(stage=stage) for stage in STAGES}

    def observe(self, times: StageTimes, size: int) -> None:
        for stage, child in self._by_stage.items():
            child.observe(times.seconds[stage])
        self.size.observe(size)


@functools.cache
def stage_metrics() -> StageMetrics:
    """This process's histograms, made once (a registry refuses a second of the same name)."""
    return StageMetrics()
