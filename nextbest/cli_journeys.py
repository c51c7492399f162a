"""Journey commands: measure the shipped journeys against the simulator's truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nextbest.cli_common import JsonFlag, console, fail
from nextbest.settings import get_settings

journeys_app = typer.Typer(no_args_is_help=True, help="Always-on, multi-step journeys.")

# nextbest.cli mounts this group and registers bench_journey_coverage on `bench`.

Customers = Annotated[int | None, typer.Option(min=1, help="people in each simulated world")]
Days = Annotated[int | None, typer.Option(min=1, help="days simulated")]
Seed = Annotated[int | None, typer.Option(help="random seed (of the first world)")]


Folder = Annotated[
    Path | None, typer.Option(help="folder of journey files (default: the shipped examples)")
]
EXAMPLES = Path(__file__).resolve().parents[1] / "journeys" / "examples"


def _journeys(folder: Path | None):  # noqa: ANN202 - list[Journey]; pydantic imported late
    """The journeys of ``folder``'s YAML files, in name order; one line naming a bad file."""
    import yaml
    from pydantic import ValidationError

    from journeys.definition import Journey

    folder = folder or EXAMPLES
    files = sorted(folder.glob("*.yaml"))
    if not files:
        fail(f"--folder: no journey files (*.yaml) in {folder}")
    out = []
    for path in files:
        try:
            out.append(Journey.model_validate(yaml.safe_load(path.read_text(encoding="utf-8"))))
        except yaml.YAMLError as exc:
            fail(f"{path}: not YAML ({str(exc).splitlines()[0]})")
        except ValidationError as exc:
            first, more = exc.errors()[0], exc.error_count() - 1
            where = ".".join(str(k) for k in first["loc"]) or "file"
            also = f" (and {more} more: `nextbest journeys validate` lists them)" if more else ""
            fail(f"{path}: {where}: {first['msg']}{also}")
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


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

    from benchmarks.journey_coverage import simulated_lifts

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
    table = Table(title="Journeys: lift in goal conversion over the holdout (points)")
    for col in ("journey", "treated", "holdout", "measured", "95% CI", "truth", "covered"):
        table.add_column(col, justify="left" if col == "journey" else "right")
    for name, x in lifts.items():
        ci = "-" if x.ci_low is None else f"{_pct(x.ci_low)} to {_pct(x.ci_high)}"
        covered = "-" if x.ci_low is None else "yes" if x.covered else "no"
        table.add_row(name, str(x.n_treated), str(x.n_holdout), _pct(x.measured_lift), ci,
                      _pct(x.true_lift), covered)  # fmt: skip
    console.print(table)


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

    from benchmarks.journey_coverage import run

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
                      _pct(v["mean_true_lift"]), _pct(v["mean_measured_lift"]))  # fmt: skip
    console.print(table)
