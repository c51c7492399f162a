"""Customer lifetime value commands: ``nextbest clv predict`` and ``nextbest bench clv``."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nextbest.cli_common import JsonFlag, console, emit, fail

if TYPE_CHECKING:
    from nextbest.settings import Settings

clv_app = typer.Typer(no_args_is_help=True, help="Customer lifetime value on your transactions.")

# nextbest.cli mounts clv_app as `clv` and registers bench_clv_cmd under `bench`.


def _calibration_end(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"calibration-end: '{value}' is not a date (YYYY-MM-DD)")


@clv_app.command("predict")
def clv_predict(
    csv: Annotated[Path, typer.Option("--csv", help="transactions (CSV, may be .gz)")],
    customer: Annotated[str, typer.Option(help="column holding the customer id")],
    date_col: Annotated[str, typer.Option("--date", help="column holding the purchase date")],
    amount: Annotated[str, typer.Option(help="column holding the purchase amount")],
    calibration_end: Annotated[
        str, typer.Option(help="last day (YYYY-MM-DD) whose transactions are read")
    ],
    horizon_days: Annotated[int, typer.Option(min=1, help="days predicted after it")],
    out: Annotated[Path, typer.Option(help="output CSV, one row per customer seen by then")],
    seed: Annotated[int, typer.Option(help="LightGBM seed")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Expected repeat purchase days, value and P(alive) per customer over the horizon, from
    the better of BG/NBD + Gamma-Gamma and LightGBM on the last window of your data."""
    import pandas as pd

    from training.clv import predict_clv
    from training.clv_data import ClvDataError, read_transactions

    end = pd.Timestamp(_calibration_end(calibration_end))
    try:
        tx = read_transactions(csv, customer, date_col, amount, end)
        with console.status("CLV: fitting") as status:
            rows, result, _ = predict_clv(
                tx, end, horizon_days, seed=seed, progress=lambda t: status.update(f"CLV: {t}")
            )
    except (ClvDataError, ValueError) as exc:
        fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out, index=False, float_format="%.6g")
    emit({**result.model_dump(), "out": str(out)}, as_json)


def bench_clv_cmd(
    csv: Annotated[
        Path | None, typer.Option("--csv", help="CDNOW-shaped transactions (default: shared data)")
    ] = None,
    world: Annotated[
        Path | None,
        typer.Option(help="instead: the simulated world behind this home's features (truth)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Both CLV models on CDNOW against the 273 days after 1997-09-30, BG/NBD as the floor;
    with --world, rank correlation with the simulated world's true 12-month value."""
    from benchmarks.clv import bench_clv, bench_clv_profile, default_csv
    from training.clv_data import ClvDataError

    if world is not None:
        from nextbest.settings import get_settings

        try:
            with console.status("CLV bench (world)") as status:
                emit(bench_clv_profile(get_settings(), world, lambda t: status.update(t)), as_json)
        except (ClvDataError, ValueError) as exc:
            fail(str(exc))
        return
    path = csv or default_csv()
    if not path.exists():
        fail(f"csv: {path} is not here (give --csv PATH to the CDNOW sample)")
    try:
        with console.status("CLV bench") as status:
            result = bench_clv(path, progress=lambda t: status.update(f"CLV bench: {t}"))
    except (ClvDataError, ValueError) as exc:
        fail(str(exc))
    if not as_json:
        from rich.table import Table

        table = Table(title=f"CLV on {path.name}: holdout after {result['calibration_end']}")
        cols = ("model", "mae_purchases", "mae_vs_btyd", "predicted_purchases",
                "actual_purchases", "purchases_error_pct", "spend_error_pct",
                "spearman_value")  # fmt: skip
        for c in cols:
            table.add_column(c)
        for row in result["holdout"]:
            table.add_row(*(str(row[c]) for c in cols))
        console.print(table)
    emit(result, as_json)


Materialize = Annotated[
    bool,
    typer.Option("--materialize/--no-materialize", help="load the values into the online store"),
]


def _home_with_events() -> Settings:
    """The settings of a home with an event log to value, else a one-line failure."""
    from nextbest.settings import get_settings

    s = get_settings()
    if not (s.event_log_dir / "batch.parquet").exists():
        fail("events: no event log in the home (run `nextbest features build` first)")
    return s


def _emit_values(s: Settings, result: dict[str, Any], materialize: bool, as_json: bool) -> None:
    """Load the values written into the online store when asked, then print the result."""
    from training.clv_world import materialize_values

    if materialize:
        materialize_values(s)
        result["materialized"] = "customer_value"
    emit(result, as_json)


@clv_app.command("train")
def clv_train(
    materialize: Materialize = True,
    as_json: JsonFlag = False,
) -> None:
    """CLV of every customer in the event log: both models registered in MLflow as ``clv``
    (the better champion), the champion's values written to ``customer_value`` of
    ``profile_v2``."""
    import contextlib
    import sys

    from features.store import apply_repo, get_store
    from training.clv_data import ClvDataError
    from training.clv_world import train_clv

    s = _home_with_events()
    store = get_store(s)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for --json
        apply_repo(store)  # a home applied before clv_v1 and profile_v2 existed lacks them
    try:
        with console.status("CLV: fitting") as status:
            result = train_clv(s, progress=lambda t: status.update(f"CLV: {t}"))
    except (ClvDataError, ValueError) as exc:
        fail(str(exc))
    _emit_values(s, result, materialize, as_json)


@clv_app.command("score")
def clv_score(
    materialize: Materialize = True,
    as_json: JsonFlag = False,
) -> None:
    """CLV of every customer in the event log from the registered ``clv`` champion, without
    refitting (after a promotion, or an alias moved in MLflow), into ``profile_v2``."""
    from training.clv_data import ClvDataError
    from training.clv_world import champion_values
    from training.registry import RegistryError

    s = _home_with_events()
    try:
        with console.status("CLV: scoring with the champion"):
            result = champion_values(s)
    except (ClvDataError, RegistryError) as exc:
        fail(str(exc))
    _emit_values(s, result, materialize, as_json)
