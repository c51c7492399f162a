"""Journey commands: check journey files before they run, export their JSON Schema.

``nextbest.cli`` mounts ``journeys_app`` as ``nextbest journeys``; add further journey
commands (the runner, the evaluation) here with ``@journeys_app.command(...)``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from nextbest.cli_common import JsonFlag, console, emit, fail
from nextbest.settings import get_settings

journeys_app = typer.Typer(
    no_args_is_help=True, help="Journeys: always-on, triggered, multi-step dialogs."
)


@journeys_app.command("validate")
def validate_cmd(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="journey files or folders; default: the active journeys folder"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check journey files against the model, the step graph and the offer catalogue: one line
    per problem on stderr and exit 1, or ``ok: N journeys (names)``."""
    from journeys.load import check_paths
    from offers.catalog import CatalogError, load_catalog

    if not paths:
        folder = get_settings().journeys_path
        if not folder.is_dir():
            print(f"no folder {folder}: no journeys are active", file=sys.stderr)
        paths = [folder] if folder.is_dir() else []
    try:
        catalog = load_catalog()
    except CatalogError as exc:
        fail(str(exc))
    journeys, problems = check_paths(paths, catalog)
    for line in problems:
        print(line, file=sys.stderr)
    if as_json:
        found = [{"name": j.name, "version": j.version} for j in journeys]
        print(json.dumps({"journeys": found, "problems": problems}))
    elif not problems:
        print(f"ok: {len(journeys)} journeys ({', '.join(j.name for j in journeys)})")
    if problems:
        raise typer.Exit(1)


@journeys_app.command("schema")
def schema_cmd(
    out: Annotated[
        Path | None, typer.Option(help="write the schema to this file instead of stdout")
    ] = None,
) -> None:
    """The JSON Schema of a journey file, for editors (YAML language servers, IDEs)."""
    from journeys.load import schema_text

    if out is None:
        sys.stdout.write(schema_text())
        return
    try:
        out.write_text(schema_text(), encoding="utf-8")
    except OSError as exc:
        fail(f"--out {out}: cannot write: {exc.strerror}")
    print(f"wrote {out}")


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


def bench_journeys_cmd(
    quick: Annotated[bool, typer.Option("--quick", help="small sizes, for a test")] = False,
    postgres: Annotated[
        bool, typer.Option(help="also measure on PostgreSQL at 127.0.0.1:5432 if it answers")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Event -> outbox latency and runner throughput (1 and 3 runners, few and many instances
    waiting) on SQLite and PostgreSQL, against a bare insert into the same database."""
    from benchmarks.journeys import bench_journeys

    emit(bench_journeys(quick=quick, postgres=postgres), as_json)
