"""Data commands: simulate a world, resolve identities, build and serve features, profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from nextbest.cli_common import JsonFlag, console, emit, fail
from nextbest.settings import get_settings

identity_app = typer.Typer(no_args_is_help=True, help="Identity resolution.")
features_app = typer.Typer(no_args_is_help=True, help="The Feast feature store.")

# nextbest.cli mounts these two groups and registers the other commands on the root app and `bench`.


def simulate(
    customers: Annotated[int | None, typer.Option(help="people in the world")] = None,
    days: Annotated[int | None, typer.Option(help="days of history")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a synthetic omnichannel world (people, identities, events, campaigns) as Parquet."""
    from simulator.world import simulate_world

    s = get_settings()
    try:
        summary = simulate_world(
            customers=s.customers if customers is None else customers,
            days=s.days if days is None else days,
            seed=s.seed if seed is None else seed,
            out=out or s.world_dir,
        )
    except ValueError as exc:
        fail(str(exc))
    if not as_json:
        emit({k: v for k, v in summary.items() if k != "calibration"}, as_json)
        console.print(calibration_table(summary["calibration"]))
        console.print(calibration_targets(summary["calibration"]))
        return
    emit(summary, as_json)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def calibration_table(cal: dict) -> Table:
    """The world's campaign response by offer, channel and trigger type, in percent."""
    t = Table(title="Calibration: true 30-day conversion (observed)", box=box.SIMPLE_HEAD)
    t.add_column("group", no_wrap=True)
    for col in ("untreated", "treated", "uplift pt", "n"):
        t.add_column(col, justify="right", no_wrap=True)
    for part in ("by_offer", "by_channel", "by_trigger"):
        t.add_row(f"[bold]{part.replace('_', ' ')}[/]")
        for name, r in cal[part].items():
            t.add_row(
                f"  {name}",
                f"{_pct(r['untreated_conversion'])} ({_pct(r['observed_untreated'])})",
                f"{_pct(r['treated_conversion'])} ({_pct(r['observed_treated'])})",
                f"{100 * r['mean_true_uplift']:+.2f}",
                str(r["n"]),
            )
    return t


def calibration_targets(cal: dict) -> Table:
    """Each target users report, the world's figure and whether it lands inside."""
    met = "all met" if cal["pass"] else "NOT all met"
    t = Table(title=f"Calibration targets (simulator/calibration.py): {met}", box=box.SIMPLE_HEAD)
    for col in ("target", "value", "range", ""):
        t.add_column(col)
    for name, r in cal["targets"].items():
        low, high = r["target"]
        t.add_row(
            name,
            "-" if r["value"] is None else f"{r['value']:.4g}",
            f"{low:g} .. {'' if high is None else f'{high:g}'}",
            "[green]pass[/]" if r["pass"] else "[red]FAIL[/]",
        )
    return t


# --- identity -----------------------------------------------------------------------------


@identity_app.command("resolve")
def identity_resolve(
    csv: Annotated[Path, typer.Option(help="records: record_id,email,phone,first_name,...")],
    out: Annotated[Path, typer.Option(help="output CSV: record_id,customer_id")],
    region: Annotated[str | None, typer.Option(help="country for national phone numbers")] = None,
    lenient: Annotated[
        bool, typer.Option(help="drop unparsable values with a warning instead of failing")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Merge identity records into customers (stored in the ledger DB, ids stable across runs).

    Every row must be usable: a value that is present but cannot be parsed (e.g. a phone that is
    not a number for the region) is an error naming the row (1 = first data row) and column,
    unless --lenient, which drops such values (a row left with no identifier becomes a customer
    of its own) and prints each as a warning.
    """
    import pandas as pd

    from features.identity import graph_for
    from features.identity_records import IdentityInputError

    s = get_settings()
    if region:
        s = s.model_copy(update={"region": region.upper()})
    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        fail(f"--csv {csv}: cannot read ({exc})")
    with console.status(f"resolving {len(frame)} identity records"):
        graph = graph_for(s)
        try:
            resolved = graph.resolve(frame, lenient=lenient)
        except IdentityInputError as exc:
            fail(str(exc))
    for warning in graph.last_warnings:
        console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    resolved.to_csv(out, index=False)
    emit({"out": str(out), **graph.last_stats}, as_json)


@identity_app.command("evaluate")
def identity_evaluate(
    world: Annotated[Path | None, typer.Option(help="simulated world folder")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Pairwise precision, recall and F1 of identity resolution against the simulator's truth."""
    from features.identity_eval import evaluate_world

    s = get_settings()
    world = world or s.world_dir
    if not (world / "identities.parquet").exists():
        fail(f"--world {world}: no identities.parquet (run `nextbest simulate --out {world}`)")
    with console.status(f"resolving the identities of {world}"):
        result = evaluate_world(
            world,
            s.identity_salt,
            s.region,
            max_cluster=s.identity_max_cluster,
            max_names=s.identity_max_names,
            name_only=s.identity_link_by_name,
        )
    emit(result, as_json)


# --- features -----------------------------------------------------------------------------


@features_app.command("build")
def features_build(
    world: Annotated[Path | None, typer.Option(help="world folder (default: home/world)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Resolve identities, map events, write the event log and point-in-time snapshots."""
    from features.build import build_features

    s = get_settings()
    try:
        result = build_features(s, world or s.world_dir)
    except FileNotFoundError as exc:
        fail(str(exc))
    emit(result, as_json)


@features_app.command("apply")
def features_apply(as_json: JsonFlag = False) -> None:
    """Register the Feast repo (entity, sources, views, services) in home/features."""
    from features.store import apply_repo, get_store

    emit(apply_repo(get_store()), as_json)


@features_app.command("materialize")
def features_materialize(as_json: JsonFlag = False) -> None:
    """Load the latest snapshot of every customer into the online store."""
    from features.store import get_store, materialize

    store = get_store()
    if not store.list_feature_views():
        fail("the feature registry is empty: run `nextbest features apply` first")
    emit(materialize(store), as_json)


def profile(
    customer_id: Annotated[str, typer.Argument(help="a customer_id from the identity graph")],
    as_json: JsonFlag = False,
) -> None:
    """The unified profile of one customer (profile_v2 online read, live basket, identifiers)."""
    from feast.errors import FeatureServiceNotFoundException

    from features.store import unified_profile

    try:
        result = unified_profile(get_settings(), customer_id)
    except LookupError as exc:
        fail(str(exc))
    except FeatureServiceNotFoundException:
        fail("the feature registry has no profile_v2: run `nextbest features apply` first")
    if as_json:
        emit(result, True)
        return

    table = Table(title=f"customer {result['customer_id']}", show_header=False)
    ids = ", ".join(f"{k} x{n}" for k, n in result["identifiers"].items()) or "none"
    table.add_row("identifiers", f"{result['identifiers_total']} ({ids})")
    for section in ("basket", "features"):
        table.add_section()
        for key, value in result[section].items():
            table.add_row(key, "-" if value is None else str(value))
    Console().print(table)


def bench_features(
    events: Annotated[int, typer.Option(help="events pushed for the freshness figure")] = 300,
    customers: Annotated[int, typer.Option(help="customers materialised")] = 2000,
    as_json: JsonFlag = False,
) -> None:
    """Event-to-online freshness (p50/p99 ms), materialisation rows/s, and a raw read floor."""
    from benchmarks.features import run

    emit(run(events=events, customers=customers), as_json)
