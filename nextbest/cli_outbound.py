"""Outbound runs under capacity limits (``nextbest outbound run``) and their solver benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nextbest.cli_common import JsonFlag, emit, fail
from nextbest.settings import get_settings

outbound_app = typer.Typer(no_args_is_help=True, help="Outbound runs under capacity limits.")


@outbound_app.command("run")
def run(
    channel: Annotated[str, typer.Option(help="the channel the messages go out on")],
    limits: Annotated[Path, typer.Option(help="limits.yaml: stock, capacity a day, budget")],
    audience: Annotated[
        str | None,
        typer.Option(help="customer ids in <home>/audiences/NAME.csv (default: every customer)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="the greedy baseline's customer order")] = 0,
    milp_seconds: Annotated[float, typer.Option(help="time limit of the MILP comparison")] = 20.0,
    as_json: JsonFlag = False,
) -> None:
    """Decide for every customer of the audience on CHANNEL, choose at most one offer each to
    maximise expected incremental value within the limits (LP), queue the messages in the
    outbox with their decisions, store the limits' prices; print LP, greedy and MILP totals
    (and the truth's, on a simulated world), the prices, counts and run time."""
    from benchmarks.outbound import world_truth
    from offers.catalog import CHANNELS
    from serving.deps import load_deps
    from serving.limits import LimitsError, load_limits
    from serving.outbound import OutboundError, run_outbound
    from serving.outbound import audience as members

    if channel not in CHANNELS:
        fail(f"--channel: unknown channel {channel!r} ({', '.join(CHANNELS)})")
    if milp_seconds <= 0:
        fail(f"--milp-seconds must be > 0, got {milp_seconds}")
    s = get_settings().ensure_dirs()
    deps = load_deps(s)
    if deps.catalog is None:
        fail(f"catalog: {deps.missing.get('catalog', 'unavailable')}")
    try:
        parsed = load_limits(limits, deps.catalog)
        customers = members(deps, audience)
        truth = world_truth(s, deps.graph)
        result = run_outbound(
            deps, channel, parsed, customers, seed=seed, milp_seconds=milp_seconds, truth=truth
        )
    except (LimitsError, OutboundError) as exc:
        fail(str(exc))
    emit(result, as_json)


def bench_outbound_cmd(
    customers: Annotated[list[int] | None, typer.Option(help="synthetic customer counts")] = None,
    as_json: JsonFlag = False,
) -> None:
    """LP vs greedy totals and solve times at synthetic sizes (x 8 offers)."""
    from benchmarks.outbound import bench_allocation

    sizes = customers or [10_000, 100_000, 1_000_000]
    if min(sizes) < 1:
        fail(f"--customers must be >= 1, got {min(sizes)}")
    emit(bench_allocation(sizes), as_json)
