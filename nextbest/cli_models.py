"""Model commands: train, promote and the MLflow UI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from nextbest.cli_common import JsonFlag, console, emit, fail
from nextbest.settings import get_settings

# nextbest.cli registers these commands on the root app.


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


def promote_cmd(
    model: Annotated[str, typer.Argument(help="churn | propensity | bandit | clv")],
    as_json: JsonFlag = False,
) -> None:
    """Make the challenger champion if it beats the champion on the same validation window
    (the bandit: if the lower bound of its paired OPE advantage is above the margin)."""
    from training.promotion import promote
    from training.registry import RegistryError

    try:
        emit(promote(get_settings(), model).model_dump(), as_json)
    except RegistryError as exc:
        fail(str(exc))


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
