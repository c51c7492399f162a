"""The one ``nextbest`` Typer app. Commands are thin: they parse, call a stage, print.

Machine-readable output: with ``--json`` the last line printed is one JSON object.
Bad input exits non-zero with a one-line message on stderr.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from nextbest import (
    cli_audiences,
    cli_bench_identity,
    cli_clv,
    cli_experiments,
    cli_features,
    cli_journeys,
    cli_models,
    cli_outbound,
    cli_serving,
)
from nextbest.cli_common import JsonFlag, emit, fail, settings_error
from nextbest.quiet import quiet_dependencies
from nextbest.settings import get_settings

quiet_dependencies()  # the dependencies' deprecation warnings are not the user's to act on

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: figures printed against a floor.")


@app.callback()
def _settings_first() -> None:
    """Bad settings stop every command before it starts, with one line naming the variable."""
    get_settings.cache_clear()  # read the environment of this invocation
    try:
        get_settings()
    except ValidationError as exc:
        fail(settings_error(exc))


# Registration order is the order `nextbest --help` lists: commands first, then the groups.
app.command()(cli_features.simulate)
app.command()(cli_features.profile)
app.command()(cli_models.train)
app.command("promote")(cli_models.promote_cmd)
app.command("mlflow-ui")(cli_models.mlflow_ui)
app.command()(cli_serving.serve)
app.command()(cli_serving.bento)
app.command()(cli_serving.erase)
app.command()(cli_experiments.report)
app.command()(cli_experiments.ope)
app.command()(cli_experiments.replay)

bench_app.command("features")(cli_features.bench_features)
bench_app.command("decide")(cli_serving.bench_decide_cmd)
bench_app.command("batch")(cli_serving.bench_batch_cmd)
bench_app.command("soak")(cli_serving.bench_soak_cmd)
bench_app.command("faults")(cli_serving.bench_faults_cmd)
bench_app.command("uplift")(cli_experiments.bench_uplift)
bench_app.command("uplift-models")(cli_experiments.bench_uplift_models)
bench_app.command("journey-coverage")(cli_journeys.bench_journey_coverage)
bench_app.command("journeys")(cli_journeys.bench_journeys_cmd)
bench_app.command("outbound")(cli_outbound.bench_outbound_cmd)
bench_app.command("clv")(cli_clv.bench_clv_cmd)
bench_app.command("console")(cli_serving.bench_console_cmd)
bench_app.command("bandit")(cli_experiments.bench_bandit)
bench_app.command("identity")(cli_bench_identity.bench_identity)

app.add_typer(cli_features.identity_app, name="identity")
app.add_typer(cli_features.features_app, name="features")
app.add_typer(bench_app, name="bench")
app.add_typer(cli_experiments.uplift_app, name="uplift")
app.add_typer(cli_journeys.journeys_app, name="journeys")
app.add_typer(cli_outbound.outbound_app, name="outbound")
app.add_typer(cli_audiences.segments_app, name="segments")
app.add_typer(cli_audiences.audience_app, name="audience")
app.add_typer(cli_clv.clv_app, name="clv")


@app.command()
def demo(
    visits: Annotated[int, typer.Option(min=1, help="visits sent to the live service")] = 300,
    replay_visits: Annotated[
        int, typer.Option(min=1, help="visits in the bandit replay")
    ] = 20_000,  # nextbest.demo.REPLAY_VISITS (not imported: it would slow every command)
    keep: Annotated[
        bool, typer.Option("--keep", help="reuse the home instead of starting from nothing")
    ] = False,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve", help="leave the service running at the end and print the console's address"
        ),
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
    if serve:
        from nextbest.demo_serve import serve_console

        raise typer.Exit(serve_console(get_settings()))


if __name__ == "__main__":
    app()
