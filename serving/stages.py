"""Where a decision's time goes, stage by stage (issue 14).

``plan_many`` times each stage of the pipeline once for the whole batch; the service exports
the times as Prometheus histograms, the benchmarks print them. A batch's stage time is what
every decision in it waited for that stage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# in pipeline order; "ledger" is the commit (the contact-history read is "eligibility")
STAGES = ("identity", "features", "eligibility", "scoring", "bandit", "ledger")


class StageTimes:
    """Seconds per stage, accumulated over one or more batches (``with times("scoring"):``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if stage not in self.seconds:
            raise KeyError(f"stage: {stage!r} is not one of {', '.join(STAGES)}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def add(self, other: StageTimes) -> None:
        for stage, seconds in other.seconds.items():
            self.seconds[stage] += seconds
