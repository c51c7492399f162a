"""Experiment commands: uplift analysis, the uplift report, off-policy evaluation, replay."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nextbest.cli_common import JsonFlag, console, emit, fail
from nextbest.settings import get_settings

uplift_app = typer.Typer(no_args_is_help=True, help="Uplift statistics for experiment exports.")

# nextbest.cli mounts this group and registers the other commands on the root app and `bench`.


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
    from estimation.uplift import UpliftError
    from experiments.exports import analyze_export

    try:
        result = analyze_export(csv, arm, outcome, control, covariate, alpha)
    except UpliftError as exc:
        fail(str(exc))
    emit(result.model_dump(), as_json)


@uplift_app.command("train")
def uplift_train(
    csv: Annotated[Path, typer.Option("--csv", help="training table of a randomised test (CSV)")],
    treatment: Annotated[str, typer.Option(help="column holding the arm label")],
    treated: Annotated[str, typer.Option(help="label of the treated arm in that column")],
    outcome: Annotated[str, typer.Option(help="column holding the 0/1 outcome")],
    id_col: Annotated[str, typer.Option("--id", help="column identifying each row")],
    predict: Annotated[Path, typer.Option(help="rows to score (CSV: the id and covariates)")],
    out: Annotated[Path, typer.Option(help="where to write <id>,uplift")],
    seed: Annotated[int, typer.Option(help="random seed of the fit")] = 0,
    learner: Annotated[
        str, typer.Option(help="staged | s | t (see training/propensity.py)")
    ] = "staged",
    as_json: JsonFlag = False,
) -> None:
    """Fit Nextbest's uplift model on a test's table and write the uplift of every row to score."""
    from estimation.uplift import UpliftError
    from experiments.uplift_train import train_and_predict

    try:
        result = train_and_predict(
            csv, treatment, treated, outcome, id_col, predict, out, seed, learner
        )
    except UpliftError as exc:
        fail(str(exc))
    emit(result, as_json)


def report(
    out: Annotated[Path | None, typer.Option(help="folder for report.html and report.json")] = None,
    world: Annotated[Path | None, typer.Option(help="simulated world folder")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write the marketers' uplift report: one self-contained HTML file, same numbers as JSON."""
    from experiments.report import ReportError
    from experiments.report_charts import write_report

    s = get_settings()
    try:
        paths = write_report(s, out or s.reports_dir, world_dir=world)
    except ReportError as exc:
        fail(str(exc))
    emit(paths, as_json)


def bench_uplift(
    experiments: Annotated[int, typer.Option(min=100, help="simulated experiments")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Interval coverage and false-positive rate over simulated experiments with known uplift."""
    from benchmarks.uplift_coverage import run

    emit(run(experiments, seed), as_json)


def bench_uplift_models(
    customers: Annotated[
        int, typer.Option(min=0, help="customers of the simulated world (0: leave it out)")
    ] = 20_000,
    hillstrom: Annotated[
        Path | None, typer.Option("--csv", help="Hillstrom e-mail experiment CSV")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed of the world and the splits")] = 7,
    as_json: JsonFlag = False,
) -> None:
    """The uplift league: Nextbest's uplift model against CausalML's S, T, X, R and DR learners
    on the simulator (truth known) and the Hillstrom experiment: Qini, correlation with truth."""
    from benchmarks.uplift_models import LeagueError, run_league

    try:
        result = run_league(get_settings(), customers, hillstrom, seed)
    except LeagueError as exc:
        fail(str(exc))
    emit(result, as_json)


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
    from benchmarks.replay import run_replay

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
        if result.greedy_gap_closed is not None and result.linear_ceiling is not None:
            console.print(
                f"without exploration the policy would close {result.greedy_gap_closed:.2f}; "
                f"its model class fitted on the truth itself closes {result.linear_ceiling:.2f}"
            )
    emit(result.model_dump(), as_json)


def bench_bandit(
    visits: Annotated[int, typer.Option(min=10, help="simulated visits per seed")] = 20_000,
    seeds: Annotated[str, typer.Option(help="comma-separated seeds of the visits")] = "1,2,3",
    retrain_every: Annotated[
        int, typer.Option(min=1, help="retrain the served bandit from the ledger every K visits")
    ] = 10_000,
    as_json: JsonFlag = False,
) -> None:
    """The bandit league: Nextbest's served policy against uniform random, the best single
    offer, propensity x value, uplift greedy, epsilon-greedy, LinUCB, linear Thompson sampling,
    VW's explorers and the oracle, on the same visits, scored by the simulator's truth."""
    from benchmarks.league import run_league

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"seeds: {seeds!r} is not a comma-separated list of integers")
    try:
        result = run_league(get_settings(), visits, seed_list, retrain_every=retrain_every)
    except ValueError as exc:
        fail(str(exc))
    if not as_json:
        for name, p in sorted(result.policies.items(), key=lambda kv: -kv[1].mean):
            mark = " <- Nextbest" if name == result.nextbest else ""
            gaps = ", ".join(f"{g:.2f}" for g in p.gap_closed)
            console.print(f"{name:>18}  gap closed {p.mean:5.2f}  ({gaps}){mark}")
        console.print(f"learning curves: {result.plot}")
    emit(result.model_dump(), as_json)
