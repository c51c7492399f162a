"""``nextbest bench identity``: batch identity resolution against its floor, and Splink."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from nextbest.cli_common import JsonFlag, console, emit, fail

COLUMNS = (
    "records",
    "engine",
    "threshold",
    "precision",
    "recall",
    "f1",
    "seconds",
    "cpu_seconds",
    "records_per_s",
    "peak_gb",
    "time_vs_floor",
)


def _sizes(text: str, option: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s.replace("_", "")) for s in text.split(",") if s.strip())
    except ValueError:
        fail(f"{option}: expected comma-separated record counts, got {text!r}")
    if any(n < 2 for n in sizes):
        fail(f"{option}: every size must be at least 2, got {text!r}")
    return sizes


def _table(result: dict[str, Any]) -> Table:
    table = Table(title=f"batch identity resolution, region {result['region']}")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "engine" else "right")
    for row in result["rows"]:
        table.add_row(*(str(row.get(c, "")) for c in COLUMNS))
    return table


def bench_identity(
    sizes: Annotated[
        str, typer.Option(help="generated record counts for ours and the floor")
    ] = "10000,100000,1000000",
    splink: Annotated[bool, typer.Option("--splink", help="also run Splink (DuckDB)")] = False,
    splink_sizes: Annotated[
        str, typer.Option(help="record counts Splink runs at, with --splink")
    ] = "10000,129000,515000",
    csv: Annotated[
        Path | None, typer.Option(help="measure this record CSV instead of generated sets")
    ] = None,
    region: Annotated[str, typer.Option(help="country for national phone numbers")] = "DE",
    seed: Annotated[int, typer.Option(help="seed of the record generator")] = 0,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of speed and memory")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Records/s, peak memory and pairwise quality of the batch engine against a floor
    (reading and normalising the same records), each run in its own process."""
    from benchmarks.identity import plot as plot_result
    from benchmarks.identity import run

    if csv is not None and not csv.is_file():
        fail(f"--csv {csv}: no such file")
    ours = _sizes(sizes, "--sizes")
    theirs = _sizes(splink_sizes, "--splink-sizes") if splink else ()
    steps = 1 if csv else len(set(ours) | set(theirs))
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("identity bench", total=steps)

        started: list[str] = []

        def step(message: str) -> None:
            progress.update(task, description=message, advance=1 if started else 0)
            started.append(message)

        try:
            result = run(ours, theirs, region=region.upper(), seed=seed, csv=csv, progress=step)
        except RuntimeError as exc:
            fail(str(exc))
        progress.update(task, completed=steps)
    if plot is not None:
        result["plot"] = str(plot_result(result, plot))
    if not as_json:
        Console().print(_table(result))
    emit(result, as_json)
