"""Data commands: simulate a world, resolve identities, build and serve features, profile."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from nextbest.cli_common import JsonFlag, console, emit, fail
from nextbest.settings import Settings, get_settings

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
    merge_into_home: Annotated[
        bool,
        typer.Option(
            "--merge-into-home",
            help="merge the records into the home's identity graph (live customers) instead "
            "of a fresh graph written beside --out",
        ),
    ] = False,
    lenient: Annotated[
        bool,
        typer.Option(
            "--lenient/--strict",
            help="keep going past unusable e-mails/phones (counted, first few shown) or stop "
            "at the first one",
        ),
    ] = True,
    delimiter: Annotated[str, typer.Option(help="the CSV's field separator")] = ",",
    as_json: JsonFlag = False,
) -> None:
    """Cluster identity records into customers; write record_id -> customer_id to --out.

    By default the records are resolved in a fresh graph (OUT's name with .graph.db, for
    `identity explain --graph`), so a test file never links its people to live customers;
    --merge-into-home joins them to the home graph (ids stable across runs). A fresh graph is
    built by the batch engine (memory bounded by the largest block, not the file). An unusable value
    (a phone that is not a number for the region, a malformed e-mail) is dropped and counted,
    or with --strict stops the run naming the row (1 = first data row) and column.
    """
    from features.identity import fresh_graph, graph_for
    from features.identity_records import IdentityInputError

    s = get_settings()
    if region:
        s = s.model_copy(update={"region": region.upper()})
    if not merge_into_home and not s.identity_link_by_name:  # name links cross blocks
        _resolve_fresh(s, csv, out, delimiter, lenient, as_json)
        return
    frame = read_records(csv, delimiter)
    if merge_into_home:
        graph, where = graph_for(s), f"merged into the home graph ({s.ledger_db_url})"
    else:
        graph_file = out.with_name(out.stem + ".graph.db")
        graph = fresh_graph(graph_file, s)
        where = f"in a fresh graph {graph_file}; the home graph was not touched"
    with console.status(f"resolving {len(frame)} identity records"):
        try:
            resolved = graph.resolve(frame, lenient=lenient)
        except IdentityInputError as exc:
            fail(str(exc))
    for warning in graph.last_warnings[:WARNINGS_SHOWN]:
        console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    if len(graph.last_warnings) > WARNINGS_SHOWN:
        console.print(f"warning: ... and {len(graph.last_warnings) - WARNINGS_SHOWN} more")
    out.parent.mkdir(parents=True, exist_ok=True)
    resolved.to_csv(out, index=False)
    stats = graph.last_stats
    emit(
        {"out": str(out), "graph": "home" if merge_into_home else str(graph_file)} | stats, as_json
    )
    console.print(
        f"wrote {stats['customers']} customers for {stats['records']} records to {out}, {where}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


WARNINGS_SHOWN = 10
CHUNK_ROWS = 100_000


def _resolve_fresh(
    s: Settings, csv: Path, out: Path, delimiter: str, lenient: bool, as_json: bool
) -> None:
    """The default path of `identity resolve`: the batch engine (memory bounded by the largest
    block) clusters the records and its result is written as a fresh graph beside --out."""
    from features.identity import fresh_graph
    from features.identity_fresh import resolve_fresh
    from features.identity_records import IdentityInputError

    graph_file = out.with_name(out.stem + ".graph.db")
    chunks = iter_records(csv, delimiter, CHUNK_ROWS)
    first = next(chunks)  # a file that cannot be read fails before the old graph is replaced
    if first.empty:
        fail(f"--csv {csv}: no records below the header")
    graph = fresh_graph(graph_file, s)
    with console.status("resolving identity records") as status:

        def progress(stage: str, done: int) -> None:
            status.update(f"resolving identity records: {stage} {done:,}")

        try:
            stats, shown = resolve_fresh(
                graph,
                s,
                csv,
                itertools.chain([first], chunks),
                out,
                strict=not lenient,
                warnings_kept=WARNINGS_SHOWN,
                progress=progress,
            )
        except IdentityInputError as exc:
            fail(str(exc))
    for warning in shown:
        console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    if stats["warnings"] > len(shown):
        console.print(f"warning: ... and {stats['warnings'] - len(shown)} more")
    emit({"out": str(out), "graph": str(graph_file)} | stats, as_json)
    console.print(
        f"wrote {stats['customers']} customers for {stats['records']} records to {out}, "
        f"in a fresh graph {graph_file}; the home graph was not touched",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def read_records(csv: Path, delimiter: str):  # noqa: ANN201 - a pandas DataFrame
    """The records file as text columns; one line naming the problem when it cannot be read
    (missing, not text, ragged rows) or is split by another delimiter than ``delimiter``."""
    return next(iter_records(csv, delimiter, None))


def iter_records(csv: Path, delimiter: str, chunk_rows: int | None):  # noqa: ANN201 - frames
    """``read_records`` a chunk of ``chunk_rows`` at a time (the whole file when None), so a
    big file is checked as it is read and never held whole."""
    import warnings

    import pandas as pd

    from features.schema import IDENTITY_INPUT_COLUMNS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frames = pd.read_csv(
                csv,
                dtype=str,
                keep_default_na=False,
                sep=delimiter,
                index_col=False,
                chunksize=chunk_rows,
            )
            if chunk_rows is None:
                frames = [frames]
            for n, frame in enumerate(frames):
                if n == 0:
                    _check_header(frame, csv, delimiter, IDENTITY_INPUT_COLUMNS)
                yield frame
    except pd.errors.ParserWarning:
        fail(f"--csv {csv}: cannot parse (a row has more fields than the header)")
    except (OSError, UnicodeDecodeError) as exc:
        fail(
            f"--csv {csv}: cannot read ({exc.strerror or exc})"
            if isinstance(exc, OSError)
            else f"--csv {csv}: cannot read (not UTF-8 text: {exc.reason})"
        )
    except pd.errors.EmptyDataError:
        fail(f"--csv {csv}: the file is empty (expected a header row)")
    except pd.errors.ParserError as exc:
        fail(f"--csv {csv}: cannot parse ({str(exc).strip()})")


def _check_header(frame, csv: Path, delimiter: str, columns: tuple[str, ...]) -> None:  # noqa: ANN001
    """One line when the header is split by another delimiter or lacks a column."""
    if len(frame.columns) == 1:
        header = str(frame.columns[0])
        for other in (";", "\t", "|", ","):
            if other != delimiter and other in header:
                shown = "\\t" if other == "\t" else other
                fail(
                    f"--csv {csv}: the header is one column split by '{shown}', not by "
                    f"'{delimiter}' (pass --delimiter '{shown}')"
                )
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        fail(f"--csv {csv}: missing column(s) {', '.join(missing)}")


GraphFile = Annotated[
    Path | None, typer.Option("--graph", help="a fresh graph from `identity resolve`")
]


@identity_app.command("explain")
def identity_explain(
    customer_id: Annotated[str, typer.Argument(help="a customer_id from the identity graph")],
    graph_file: GraphFile = None,
    as_json: JsonFlag = False,
) -> None:
    """The customer's records and, for each link between them, the rule that made it."""
    from features.identity_admin import StewardError, explain

    graph = _steward_graph(graph_file)
    try:
        result = explain(graph, customer_id)
    except StewardError as exc:
        fail(str(exc))
    if as_json:
        emit(result.model_dump(mode="json"), True)
        return
    table = Table(title=f"customer {result.customer_id}", box=box.SIMPLE_HEAD)
    for col in ("record", "identifiers"):
        table.add_column(col)
    for r in result.records:
        table.add_row(r["record_id"], ", ".join(r["identifiers"]) or "-")
    links = Table(title="links (why these records are one customer)", box=box.SIMPLE_HEAD)
    for col in ("record", "record", "rule", "made"):
        links.add_column(col)
    for link in result.links:
        links.add_row(link.a, link.b, link.rule, f"{link.made_at:%Y-%m-%d %H:%M}")
    Console().print(table)
    Console().print(links)
    if result.merged_from or result.splits:
        console.print(f"merged from: {result.merged_from}; splits: {result.splits}")


@identity_app.command("split")
def identity_split(
    customer_id: Annotated[str, typer.Argument(help="the customer to split")],
    records: Annotated[
        str, typer.Option(help="record_ids to move to a new customer, comma-separated")
    ],
    graph_file: GraphFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Undo a wrong merge: move records to a new customer; later runs keep them apart."""
    from features.identity_admin import StewardError, split

    graph = _steward_graph(graph_file)
    try:
        result = split(graph, customer_id, records.split(","))
    except StewardError as exc:
        fail(str(exc))
    emit(result, as_json)


def _steward_graph(graph_file: Path | None):  # noqa: ANN202 - an IdentityGraph
    from sqlalchemy import create_engine

    from features.identity import IdentityGraph, graph_for

    s = get_settings()
    if graph_file is None:
        return graph_for(s)
    if not graph_file.is_file():
        fail(f"--graph {graph_file}: no such graph file (written by `identity resolve`)")
    return IdentityGraph(create_engine(f"sqlite:///{graph_file}"), s.identity_salt, s.region)


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
