"""``nextbest train churn|propensity``: frames -> fit -> evaluate -> MLflow run + challenger ->
optional promotion gate, with a Rich progress display over the long steps."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from nextbest.settings import Settings
from training.datasets import DatasetError, Frames
from training.scoring import OFFER_COLUMNS, TREATED

TrainingError = DatasetError  # the CLI turns these into one-line errors


def _steps(console: Console | None) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=True,
    )


def train_model(
    settings: Settings,
    model: Literal["churn", "propensity"],
    *,
    promote: bool = False,
    world_dir: Path | None = None,
    max_rounds: int = 2000,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train one model on the simulated world, register it as challenger, maybe promote it."""
    from training import registry

    timings: dict[str, float] = {}
    with _steps(console) as progress:
        task = progress.add_task(f"{model}: point-in-time frames from Feast")

        def step(name: str, fn: Callable[[], Any]) -> Any:
            progress.update(task, description=f"{model}: {name}")
            t0 = time.perf_counter()
            out = fn()
            timings[name.split()[0]] = round(time.perf_counter() - t0, 2)
            return out

        if model == "churn":
            from training.churn import evaluate_churn, fit_churn
            from training.datasets import churn_frames

            frames: Frames = step("frames", lambda: churn_frames(settings))
            scorer, params = step(
                "fit LightGBM",
                lambda: fit_churn(
                    frames.train, frames.features, frames.feature_service, max_rounds=max_rounds
                ),
            )
            metrics, plots = step("evaluate", lambda: evaluate_churn(scorer, frames.valid))
            keep = ["customer_id", "event_timestamp", *frames.features, "label"]
        else:
            frames = step("frames", lambda: _propensity_frames(settings, world_dir))
            scorer, params, metrics, plots = step(
                "fit the staged, S- and T-learners",
                lambda: _fit_propensity(frames, max_rounds, settings.uplift_learner),
            )
            keep = [
                "customer_id",
                "event_timestamp",
                *frames.features,
                *OFFER_COLUMNS,
                TREATED,
                "label",
            ]
            keep += [c for c in ("true_p_treated", "true_p_untreated") if c in frames.valid]
        example_cols = scorer.spec.features + [c for c in OFFER_COLUMNS if c in scorer.spec.extra]
        run = step(
            "log to MLflow",
            lambda: registry.log_model_run(
                settings,
                scorer,
                params={**params, "feature_service": frames.feature_service},
                metrics={**metrics, "train_seconds": sum(timings.values())},
                validation=frames.valid[keep],
                input_example=frames.valid[example_cols].head(5),
                plots=plots,
                data_window=frames.window,
            ),
        )
        result: dict[str, Any] = {
            **run,
            "feature_service": frames.feature_service,
            **frames.window,
            "train_rows": len(frames.train),
            "valid_rows": len(frames.valid),
            "metrics": {k: round(v, 4) for k, v in metrics.items()},
        }
        if promote:
            decision = step("promotion gate", lambda: registry.promote(settings, model))
            result["promotion"] = decision.model_dump()
    result["seconds"] = timings
    return result


def _propensity_frames(settings: Settings, world_dir: Path | None) -> Frames:
    from training.datasets import propensity_frames

    return propensity_frames(settings, world_dir)


def _fit_propensity(
    frames: Frames, max_rounds: int, keep: str = "staged"
) -> tuple[Any, dict, dict, dict]:
    """Fit every learner, measure each on the validation exposures, keep ``keep``
    (``NEXTBEST_UPLIFT_LEARNER``)."""
    from training.propensity import evaluate_uplift, fit_uplift

    chosen: tuple[Any, dict, dict, dict] | None = None
    comparison: dict[str, float] = {}
    for learner in ("staged", "s", "t"):
        scorer, params = fit_uplift(
            frames.train,
            frames.features,
            frames.feature_service,
            learner=learner,
            max_rounds=max_rounds,
        )
        metrics, plots = evaluate_uplift(scorer, frames.valid)
        for key in ("qini", "auuc", "true_uplift_pearson", "true_uplift_spearman",
                    "true_uplift_pearson_within_offer"):  # fmt: skip
            if key in metrics:
                comparison[f"{learner}_learner_{key}"] = metrics[key]
        if learner == keep:
            chosen = (scorer, params, metrics, plots)
        else:
            import matplotlib.pyplot as plt

            for fig in plots.values():
                plt.close(fig)
    assert chosen is not None
    scorer, params, metrics, plots = chosen
    return scorer, params, {**metrics, **comparison}, plots
