"""Journey commands: run the journey runner (the steps of customers in journeys)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from nextbest.cli_common import JsonFlag, console, emit, fail
from nextbest.settings import get_settings

journeys_app = typer.Typer(no_args_is_help=True, help="Journeys: always-on, multi-step dialogs.")


@journeys_app.command("run")
def run(
    once: Annotated[bool, typer.Option("--once", help="take the steps due now, then exit")] = False,
    poll: Annotated[
        float | None,
        typer.Option(help="seconds between looks when idle (default: journey_poll_seconds)"),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="steps between two looks at the clock")] = 500,
    as_json: JsonFlag = False,
) -> None:
    """The journey runner: takes due steps (messages into the outbox, waits, splits) until
    interrupted; several runners may share one PostgreSQL ledger."""
    from serving import journey_runner as jr
    from serving.deps import load_deps

    s = get_settings().ensure_dirs()
    seconds = s.journey_poll_seconds if poll is None else poll
    if seconds <= 0:
        fail(f"--poll must be > 0, got {poll}")
    try:
        journeys = jr.active_journeys(s)
    except ValueError as exc:
        fail(str(exc))
    deps = load_deps(s, bandit=None)  # the bandit explores /decide's visits, not journeys
    jr.sync_versions(journeys, deps.ledger.engine)
    if not once:
        console.print(f"journey runner: {len(journeys)} journeys, polling every {seconds}s")
    total = 0
    while True:
        steps = jr.run_due(deps, limit=batch)
        total += steps
        if once and steps < batch:
            break
        if steps < batch:
            time.sleep(seconds)
    emit({"steps": total, "journeys": sorted(j.name for j in journeys)}, as_json)
