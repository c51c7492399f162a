"""Journey commands: check journey files before they run, export their JSON Schema.

``nextbest.cli`` mounts ``journeys_app`` as ``nextbest journeys``; add further journey
commands (the runner, the evaluation) here with ``@journeys_app.command(...)``.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
    from serving.deps import load_deps
    from serving.journey_defs import active, sync_versions
    from serving.journey_intents import run_round

    s = get_settings().ensure_dirs()
    seconds = s.journey_poll_seconds if poll is None else poll
    if seconds <= 0:
        fail(f"--poll must be > 0, got {poll}")
    try:
        journeys = list(active(s).values())
    except ValueError as exc:
        fail(str(exc))
    deps = load_deps(s, bandit=None)  # the bandit explores /decide's visits, not journeys
    sync_versions(journeys, deps.ledger.engine)
    if not once:
        console.print(f"journey runner: {len(journeys)} journeys, polling every {seconds}s")
    total = 0
    while True:
        _, steps = run_round(deps, limit=batch)
        total += steps
        if once and steps < batch:
            break
        if steps < batch:
            time.sleep(seconds)
    emit({"steps": total, "journeys": sorted(j.name for j in journeys)}, as_json)


Customers = Annotated[int | None, typer.Option(min=1, help="people in each simulated world")]
Days = Annotated[int | None, typer.Option(min=1, help="days simulated")]
Seed = Annotated[int | None, typer.Option(help="random seed (of the first world)")]


Folder = Annotated[
    Path | None, typer.Option(help="folder of journey files (default: the shipped examples)")
]


def _journeys(folder: Path | None) -> list:
    """The journeys of ``folder`` (default: the shipped examples), checked like
    ``nextbest journeys validate``; one line per problem and exit 1 when any is bad."""
    from journeys.load import JourneyError, load_journeys, shipped_examples

    try:
        found = load_journeys(folder or shipped_examples())
    except JourneyError as exc:
        more = len(exc.problems) - 1
        also = f" (and {more} more: `nextbest journeys validate` lists them)" if more else ""
        fail(exc.problems[0] + also)
    if not found:
        fail(f"--folder: no journey files (*.yaml) in {folder}")
    return found


@journeys_app.command("evaluate")
def evaluate_cmd(
    customers: Customers = None,
    days: Days = None,
    seed: Seed = None,
    folder: Folder = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the shipped journeys on a simulated world: each one's measured lift over its holdout,
    its 95% interval and the truth's lift."""
    import json

    from benchmarks.journey_coverage import lift_table, simulated_lifts

    s = get_settings()
    try:
        lifts = simulated_lifts(
            s.customers if customers is None else customers,
            s.days if days is None else days,
            s.seed if seed is None else seed,
            _journeys(folder),
        )
    except ValueError as exc:
        fail(str(exc))
    keys = ("measured_lift", "ci_low", "ci_high", "true_lift", "n_treated", "n_holdout")
    result = {"journeys": {name: x.model_dump(include=set(keys)) for name, x in lifts.items()}}
    if as_json:
        print(json.dumps(result))
        return
    console.print(lift_table(lifts, "Journeys: lift in goal conversion over the holdout (points)"))


def bench_journey_coverage(
    worlds: Annotated[int, typer.Option(min=1, help="simulated worlds, one seed each")] = 20,
    customers: Customers = None,
    days: Days = None,
    seed: Seed = None,
    folder: Folder = None,
    as_json: JsonFlag = False,
) -> None:
    """How often each shipped journey's 95% interval covers its true lift, over many worlds."""
    import json

    from benchmarks.journey_coverage import points, run

    s = get_settings()
    result = run(
        _journeys(folder),
        worlds,
        s.customers if customers is None else customers,
        s.days if days is None else days,
        s.seed if seed is None else seed,
    )
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"Journeys: 95% interval covers the truth ({result['goal']})")
    for col in ("journey", "covered", "mean CI width", "mean truth", "mean measured"):
        table.add_column(col, justify="left" if col == "journey" else "right")
    for name, v in result["journeys"].items():
        table.add_row(name, f"{v['covered']} / {v['worlds']}",
                      "-" if v["mean_ci_width"] is None else f"{100 * v['mean_ci_width']:.2f}",
                      points(v["mean_true_lift"]), points(v["mean_measured_lift"]))  # fmt: skip
    console.print(table)


def _iso_time(option: str, value: str | None) -> datetime | None:
    """An ISO 8601 time (naive: UTC), or a one-line failure naming the option."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option}: not an ISO 8601 time: {value!r}")
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@journeys_app.command("sweep")
def sweep_cmd(
    since: Annotated[
        str | None,
        typer.Option(help="sweep from this ISO time (default: where each journey's last ended)"),
    ] = None,
    now: Annotated[
        str | None, typer.Option(help="sweep up to this ISO time (default: now)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """One sweep of the scheduled entry triggers (lifecycle, calendar, predictive,
    behavioural): customers due in (since, now] enter their journeys; prints how many entered
    per journey. A runner sweeps by itself every ``journey_schedule_minutes``."""
    from serving.deps import load_deps
    from serving.journey_schedule import sweep

    start, end = _iso_time("--since", since), _iso_time("--now", now)
    end = end or datetime.now(UTC)
    if start is not None and start >= end:
        fail(f"--since: must be before --now ({start.isoformat()} >= {end.isoformat()})")
    s = get_settings().ensure_dirs()
    deps = load_deps(s, bandit=None)
    try:
        done = sweep(deps, end, start)
    except ValueError as exc:  # a journey file that does not load
        fail(str(exc))
    result = {
        "now": done.now.isoformat(),
        "since": {k: v.isoformat() for k, v in done.since.items()},
        "entered": done.entered,
        "skipped": done.skipped,
    }
    if not as_json:
        for name, n in done.entered.items():
            console.print(f"{name}: {n} entered" + (f" (not evaluated: {done.skipped[name]})"
                                                     if name in done.skipped else ""))  # fmt: skip
    emit(result, as_json)


def bench_journeys_cmd(
    quick: Annotated[bool, typer.Option("--quick", help="small sizes, for a test")] = False,
    postgres: Annotated[
        bool, typer.Option(help="also measure on PostgreSQL at 127.0.0.1:5432 if it answers")
    ] = True,
    rate: Annotated[
        float | None, typer.Option(min=1, help="events offered per second (default 200)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Event -> outbox latency and runner throughput (1 and 3 runners, few and many instances
    waiting) on SQLite and PostgreSQL, against a bare insert into the same database."""
    from benchmarks.journeys import bench_journeys

    emit(bench_journeys(quick=quick, postgres=postgres, rate=rate), as_json)
