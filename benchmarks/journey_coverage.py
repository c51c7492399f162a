"""Does each journey's measured lift cover the truth? The shipped journeys on many worlds.

Each world (its own seed) runs the shipped journeys through the simulator's dialog model
(``simulator.journey_sim``), which keeps each journey's true incremental effect; the report's
own measurement (:func:`experiments.journeys.evaluate`) gives the lift and its 95% interval.
Over N worlds an honest interval covers the truth about 95% of the time (goal: 17-20 of 20).
``nextbest journeys evaluate`` is one world of this.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from experiments.journeys import evaluate
from journeys.definition import Journey


class JourneyLift(BaseModel):
    """One journey on one world: what was measured and what is true."""

    measured_lift: float | None
    ci_low: float | None
    ci_high: float | None
    true_lift: float
    n_treated: int
    n_holdout: int
    note: str = ""

    @property
    def covered(self) -> bool:
        return self.ci_low is not None and self.ci_low <= self.true_lift <= self.ci_high


def simulated_lifts(
    customers: int, days: int, seed: int, journeys: Sequence[Journey]
) -> dict[str, JourneyLift]:
    """Simulate a world, run ``journeys`` in it, measure each against its holdout."""
    from simulator.journey_sim import simulate_journeys
    from simulator.world import build_world

    world = build_world(customers, days, seed)
    run = simulate_journeys(world, list(journeys), seed)
    results = {r.journey: r for r in evaluate(run.units, run.steps, {j.name: j for j in journeys})}
    out = {}
    for j in journeys:  # every journey, measured or not: one that nobody entered says so
        r = results.get(j.name)
        lift, low, high = (r.measured if r else None) or (None, None, None)
        out[j.name] = JourneyLift(
            measured_lift=lift, ci_low=low, ci_high=high, true_lift=float(run.truth[j.name]),
            n_treated=r.treated.entered if r else 0, n_holdout=r.holdout.entered if r else 0,
            note=r.note if r else "nobody entered this journey in the simulated world",
        )  # fmt: skip
    return out


def points(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


def lift_table(lifts: dict[str, JourneyLift], title: str) -> Table:
    """Each journey's measured lift, its 95% interval and the truth's, in points."""
    table = Table(title=title)
    for col in ("journey", "treated", "holdout", "measured", "95% CI", "truth", "covered"):
        table.add_column(col, justify="left" if col == "journey" else "right")
    for name, x in lifts.items():
        ci = "-" if x.ci_low is None else f"{points(x.ci_low)} to {points(x.ci_high)}"
        covered = "-" if x.ci_low is None else "yes" if x.covered else "no"
        table.add_row(name, str(x.n_treated), str(x.n_holdout), points(x.measured_lift), ci,
                      points(x.true_lift), covered)  # fmt: skip
    return table


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def coverage(per: dict[str, list[JourneyLift]], worlds: int) -> dict[str, dict[str, Any]]:
    """Per journey: worlds whose interval covers the truth, mean width, mean lifts and sizes.

    A world where a journey had no interval (nobody entered, or an empty arm) counts as not
    covered: the measurement failed there."""
    out = {}
    for name, lifts in per.items():
        measured = [x for x in lifts if x.ci_low is not None and x.ci_high is not None]
        out[name] = {
            "covered": sum(x.covered for x in lifts),
            "worlds": worlds,
            "measured": len(measured),
            "mean_ci_width": _mean([x.ci_high - x.ci_low for x in measured]),  # type: ignore[operator]
            "mean_true_lift": _mean([x.true_lift for x in lifts]),
            "mean_measured_lift": _mean([x.measured_lift for x in measured]),  # type: ignore[misc]
            "mean_n_treated": _mean([x.n_treated for x in lifts]),
            "mean_n_holdout": _mean([x.n_holdout for x in lifts]),
        }
    return out


def run(
    journeys: Sequence[Journey],
    worlds: int = 20,
    customers: int = 2000,
    days: int = 90,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Coverage of each journey's 95% interval over ``worlds`` worlds (seeds seed..seed+N-1)."""
    if worlds < 1:
        raise ValueError(f"worlds: must be at least 1, got {worlds}")
    start = time.perf_counter()
    per: dict[str, list[JourneyLift]] = {j.name: [] for j in journeys}
    columns = (TextColumn("journey coverage"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("worlds", total=worlds)
        for k in range(worlds):
            for name, lift in simulated_lifts(customers, days, seed + k, journeys).items():
                per[name].append(lift)
            bar.advance(task)
    out = coverage(per, worlds)
    goal_low = int(0.85 * worlds)  # 17 of 20
    return {
        "journeys": out,
        "goal": f"covered in at least {goal_low} of {worlds} worlds",
        "met": all(v["covered"] >= goal_low for v in out.values()),
        "customers": customers,
        "days": days,
        "seeds": [seed, seed + worlds - 1],
        "seconds": round(time.perf_counter() - start, 1),
    }
