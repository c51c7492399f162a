"""Journey commands: measure the shipped journeys against the simulator's truth."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from nextbest.cli_common import JsonFlag, console, fail
from nextbest.settings import get_settings

journeys_app = typer.Typer(no_args_is_help=True, help="Always-on, multi-step journeys.")

# nextbest.cli mounts this group and registers bench_journey_coverage on `bench`.

Customers = Annotated[int | None, typer.Option(help="people in each simulated world")]
Days = Annotated[int | None, typer.Option(help="days simulated")]
Seed = Annotated[int | None, typer.Option(help="random seed (of the first world)")]


def _shipped():  # noqa: ANN202 - list[Journey], imported late to keep the CLI quick to start
    from journeys.load import load_journeys, shipped_examples

    return load_journeys(shipped_examples())


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


@journeys_app.command("evaluate")
def evaluate_cmd(
    customers: Customers = None,
    days: Days = None,
    seed: Seed = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the shipped journeys on a simulated world: each one's measured lift over its holdout,
    its 95% interval and the truth's lift."""
    import json

    from benchmarks.journey_coverage import simulated_lifts

    s = get_settings()
    try:
        lifts = simulated_lifts(
            s.customers if customers is None else customers,
            s.days if days is None else days,
            s.seed if seed is None else seed,
            _shipped(),
        )
    except ValueError as exc:
        fail(str(exc))
    keys = ("measured_lift", "ci_low", "ci_high", "true_lift", "n_treated", "n_holdout")
    result = {"journeys": {name: x.model_dump(include=set(keys)) for name, x in lifts.items()}}
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title="Journeys: lift in goal conversion over the holdout (points)")
    for col in ("journey", "treated", "holdout", "measured", "95% CI", "truth", "covered"):
        table.add_column(col, justify="left" if col == "journey" else "right")
    for name, x in lifts.items():
        ci = "-" if x.ci_low is None else f"{_pct(x.ci_low)} to {_pct(x.ci_high)}"
        table.add_row(name, str(x.n_treated), str(x.n_holdout), _pct(x.measured_lift), ci,
                      _pct(x.true_lift), "yes" if x.covered else "no")  # fmt: skip
    console.print(table)


def bench_journey_coverage(
    worlds: Annotated[int, typer.Option(min=1, help="simulated worlds, one seed each")] = 20,
    customers: Customers = None,
    days: Days = None,
    seed: Seed = None,
    as_json: JsonFlag = False,
) -> None:
    """How often each shipped journey's 95% interval covers its true lift, over many worlds."""
    import json

    from benchmarks.journey_coverage import run

    s = get_settings()
    result = run(
        _shipped(),
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
                      _pct(v["mean_true_lift"]), _pct(v["mean_measured_lift"]))  # fmt: skip
    console.print(table)
