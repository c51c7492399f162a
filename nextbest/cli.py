"""The one ``nextbest`` Typer app. Commands are thin: they parse, call a stage, print.

Machine-readable output: with ``--json`` the last line printed is one JSON object.
Bad input exits non-zero with a one-line message on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from nextbest.settings import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
identity_app = typer.Typer(no_args_is_help=True, help="Identity resolution.")
features_app = typer.Typer(no_args_is_help=True, help="The Feast feature store.")
app.add_typer(identity_app, name="identity")
app.add_typer(features_app, name="features")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: figures printed against a floor.")
app.add_typer(bench_app, name="bench")

console = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON object on the last line")]


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Print a result: a Rich view for people, or one JSON line for machines."""
    if as_json:
        print(json.dumps(result, default=str))
    else:
        console.print_json(json.dumps(result, default=str))


def fail(message: str) -> NoReturn:
    """Exit 2 with a one-line message naming what was wrong."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


@app.command()
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
    emit(summary, as_json)


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


@app.command()
def profile(
    customer_id: Annotated[str, typer.Argument(help="a customer_id from the identity graph")],
    as_json: JsonFlag = False,
) -> None:
    """The unified profile of one customer (profile_v1 online read, live basket, identifiers)."""
    from feast.errors import FeatureServiceNotFoundException

    from features.store import unified_profile

    try:
        result = unified_profile(get_settings(), customer_id)
    except LookupError as exc:
        fail(str(exc))
    except FeatureServiceNotFoundException:
        fail("the feature registry has no profile_v1: run `nextbest features apply` first")
    if as_json:
        emit(result, True)
        return
    from rich.table import Table

    table = Table(title=f"customer {result['customer_id']}", show_header=False)
    ids = ", ".join(f"{k} x{n}" for k, n in result["identifiers"].items()) or "none"
    table.add_row("identifiers", f"{result['identifiers_total']} ({ids})")
    for section in ("basket", "features"):
        table.add_section()
        for key, value in result[section].items():
            table.add_row(key, "-" if value is None else str(value))
    Console().print(table)


@bench_app.command("features")
def bench_features(
    events: Annotated[int, typer.Option(help="events pushed for the freshness figure")] = 300,
    customers: Annotated[int, typer.Option(help="customers materialised")] = 2000,
    as_json: JsonFlag = False,
) -> None:
    """Event-to-online freshness (p50/p99 ms), materialisation rows/s, and a raw read floor."""
    from benchmarks.features import run

    emit(run(events=events, customers=customers), as_json)


# --- training -----------------------------------------------------------------------------


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="churn | propensity | bandit")],
    csv: Annotated[Path | None, typer.Option(help="your own customer table (churn only)")] = None,
    label: Annotated[str | None, typer.Option(help="label column of --csv")] = None,
    id_col: Annotated[str | None, typer.Option("--id", help="identifier column of --csv")] = None,
    promote: Annotated[
        bool, typer.Option("--promote", help="make it champion if it beats the current one")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Train a model: on the simulated world (tracked and registered in MLflow) or on --csv."""
    if model not in ("churn", "propensity", "bandit"):
        fail(f"model: '{model}' is not one of churn, propensity, bandit")
    if csv is not None or label is not None or id_col is not None:
        if model != "churn":
            fail(f"csv: --csv trains churn models only, not '{model}'")
        if csv is None or label is None:
            fail("csv: --csv and --label go together")
        from training.tabular import TabularError, cross_validate_csv

        try:
            result = cross_validate_csv(csv, label, id_col)
        except TabularError as exc:
            fail(str(exc))
        emit(result.model_dump(), as_json)
        return
    s = get_settings()
    if model == "bandit":
        from training.bandit_ledger import train_bandit
        from training.bandit_registry import BanditError

        try:
            emit(train_bandit(s, promote), as_json)
        except BanditError as exc:
            fail(str(exc))
        return
    from training.registry import RegistryError
    from training.train import TrainingError, train_model

    try:
        emit(train_model(s, model, promote=promote), as_json)
    except (TrainingError, RegistryError) as exc:
        fail(str(exc))


@app.command("promote")
def promote_cmd(
    model: Annotated[str, typer.Argument(help="registered model: churn | propensity")],
    as_json: JsonFlag = False,
) -> None:
    """Make the challenger champion if it beats the champion on the same validation window."""
    from training.registry import RegistryError, promote

    try:
        emit(promote(get_settings(), model).model_dump(), as_json)
    except RegistryError as exc:
        fail(str(exc))


@app.command("mlflow-ui")
def mlflow_ui(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
) -> None:
    """Start the MLflow UI on 127.0.0.1 over the project's tracking store."""
    import subprocess

    s = get_settings()
    s.ensure_dirs()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", s.tracking_uri]
    cmd += ["--default-artifact-root", str(s.home / "mlartifacts")]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    console.print(f"MLflow UI on http://127.0.0.1:{port} over {s.tracking_uri}")
    raise typer.Exit(subprocess.call(cmd))


# --- serving ------------------------------------------------------------------------------


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="HTTP port (default: settings.port)")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
) -> None:
    """Run the decision service (bentoml serve) on 127.0.0.1 until interrupted."""
    import os

    from nextbest.settings import PROJECT_ROOT
    from serving.run import server_cmd, server_env

    s = get_settings()
    if workers is not None and workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    s.ensure_dirs()
    env = server_env(s, NEXTBEST_WORKERS=str(workers or s.workers))
    cmd = server_cmd("serving.service:Nextbest", port or s.port, s.host)
    console.print(f"serving on http://{s.host}:{port or s.port} ({workers or s.workers} workers)")
    os.chdir(PROJECT_ROOT)
    os.execve(cmd[0], cmd, env)  # bentoml becomes this process: signals reach it directly


@app.command()
def bento(as_json: JsonFlag = False) -> None:
    """Build the service into a Bento carrying the promoted models (`bentoml containerize`
    makes an image of it)."""
    from serving.bento import BentoBuildError, build_bento

    s = get_settings().ensure_dirs()
    try:
        emit(build_bento(s), as_json)
    except BentoBuildError as exc:
        fail(str(exc))


@bench_app.command("decide")
def bench_decide_cmd(
    seconds: Annotated[float, typer.Option(help="seconds per load level")] = 5.0,
    concurrency: Annotated[list[int] | None, typer.Option(help="closed-loop connections")] = None,
    workers: Annotated[int | None, typer.Option(help="server worker processes")] = None,
    use_home: Annotated[
        bool, typer.Option(help="bench the home as it is (promoted models) instead of a fresh one")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """/decide vs an empty BentoML endpoint: sequential, closed-loop and open-loop figures.

    By default a fresh home with a real Feast store of synthetic customers is used."""
    from benchmarks.decide import bench_decide

    if seconds <= 0 or seconds > 30:
        fail(f"--seconds must be in (0, 30], got {seconds}")
    if concurrency and min(concurrency) < 1:
        fail(f"--concurrency must be >= 1, got {min(concurrency)}")
    if workers is not None and workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    s = get_settings().ensure_dirs() if use_home else None
    emit(bench_decide(s, concurrency or None, seconds, workers=workers), as_json)


# --- experiments --------------------------------------------------------------------------

uplift_app = typer.Typer(no_args_is_help=True, help="Uplift statistics for experiment exports.")
app.add_typer(uplift_app, name="uplift")


@uplift_app.command("analyze")
def uplift_analyze(
    csv: Annotated[Path, typer.Option("--csv", help="experiment export (CSV, may be .gz)")],
    arm: Annotated[str, typer.Option(help="column holding the arm label")],
    outcome: Annotated[str, typer.Option(help="column holding the outcome (0/1, Yes/No, amount)")],
    control: Annotated[str | None, typer.Option(help="label of the control arm")] = None,
    covariate: Annotated[
        str | None, typer.Option(help="pre-period column for CUPED variance reduction")
    ] = None,
    alpha: Annotated[float, typer.Option(help="1 - confidence level")] = 0.05,
    as_json: JsonFlag = False,
) -> None:
    """Lift of every arm against the control: intervals, p-values (Holm), CUPED, always-valid."""
    from experiments.exports import analyze_export
    from experiments.uplift import UpliftError

    try:
        result = analyze_export(csv, arm, outcome, control, covariate, alpha)
    except UpliftError as exc:
        fail(str(exc))
    emit(result.model_dump(), as_json)


@app.command()
def report(
    out: Annotated[Path | None, typer.Option(help="folder for report.html and report.json")] = None,
    world: Annotated[Path | None, typer.Option(help="simulated world folder")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write the marketers' uplift report: one self-contained HTML file, same numbers as JSON."""
    from experiments.report import ReportError, write_report

    s = get_settings()
    try:
        paths = write_report(s, out or s.reports_dir, world_dir=world)
    except ReportError as exc:
        fail(str(exc))
    emit(paths, as_json)


@bench_app.command("uplift")
def bench_uplift(
    experiments: Annotated[int, typer.Option(min=100, help="simulated experiments")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Interval coverage and false-positive rate over simulated experiments with known uplift."""
    from benchmarks.uplift_coverage import run

    emit(run(experiments, seed), as_json)


@app.command()
def ope(
    policy: Annotated[
        str, typer.Option(help="champion | challenger | uniform | best_single | offer:ID")
    ] = "challenger",
    days: Annotated[float | None, typer.Option(help="only logs of the last DAYS days")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Off-policy value of a candidate policy on the ledger's logs (IPS, SNIPS, DM, DR, ESS)."""
    from experiments.ope import evaluate_policy

    try:
        result = evaluate_policy(get_settings(), policy, days)
    except ValueError as exc:
        fail(str(exc))
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    emit(result, as_json)


@app.command()
def replay(
    visits: Annotated[int, typer.Option(help="simulated visits through the decision pipeline")],
    retrain_every: Annotated[
        int, typer.Option(help="retrain the bandit from the ledger every K visits")
    ] = 10_000,
    exploration: Annotated[
        str | None, typer.Option(help="epsilon | squarecb (default: settings)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="random seed of the visits")] = None,
    outcomes: Annotated[
        str, typer.Option(help="sampled (drawn purchases) | expected (expected window value)")
    ] = "sampled",
    as_json: JsonFlag = False,
) -> None:
    """Learn online against the simulator's truth: value of the bandit vs random, best single
    offer and oracle per visit, the share of the random-to-oracle gap closed, a learning curve."""
    from experiments.replay import run_replay

    try:
        result = run_replay(
            get_settings(),
            visits,
            retrain_every=retrain_every,
            exploration=exploration,
            seed=seed,
            outcomes=outcomes,  # type: ignore[arg-type]
        )
    except ValueError as exc:
        fail(str(exc))
    if not as_json:
        console.print(
            f"per visit: policy {result.policy:.3f}, random {result.random:.3f}, best single "
            f"({result.best_single_offer}) {result.best_single:.3f}, oracle {result.oracle:.3f}; "
            f"gap closed {result.gap_closed:.2f}; learning curve: {result.plot}"
        )
    emit(result.model_dump(), as_json)


# --- demo ---------------------------------------------------------------------------------


@app.command()
def demo(
    visits: Annotated[int, typer.Option(min=1, help="visits sent to the live service")] = 300,
    replay_visits: Annotated[int, typer.Option(min=1, help="visits in the bandit replay")] = 2000,
    keep: Annotated[
        bool, typer.Option("--keep", help="reuse the home instead of starting from nothing")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """The whole loop on a simulated world: simulate, resolve identities, build features,
    train and promote models, serve visits over HTTP, replay the bandit, write the report."""
    from nextbest.demo import DemoError, run_demo

    try:
        summary = run_demo(get_settings(), visits, replay_visits, keep)
    except DemoError as exc:
        fail(str(exc))
    if as_json:
        emit(summary, as_json)


if __name__ == "__main__":
    app()
