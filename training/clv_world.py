"""``nextbest clv train``: CLV of every customer with purchases in the event log, both models
tracked in MLflow, the better one's figures written to the ``customer_value`` feature view.

The models see the resolved customers' purchases (the same event log Feast's views are built
from), as of the last day of the log, and predict 365 days ahead. Each is one MLflow run in the
``nextbest-clv`` experiment with its validation figures; the run whose model had the lower
validation MAE is tagged ``promoted`` and only its predictions reach the profile (``clv_12m``,
``p_alive``, ``value_tier`` of ``profile_v2``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nextbest.settings import Settings
from training.clv import ClvResult, Extra, predict_clv
from training.clv_data import ClvDataError

HORIZON_DAYS = 365
CLV_SERVICE = "clv_v1"
# value tiers: shares of the customers with a CLV, from the top (what the report groups by)
TIERS = (("top", 0.2), ("middle", 0.3), ("low", 0.5))


def event_log_transactions(settings: Settings) -> pd.DataFrame:
    """Purchases of resolved customers from the event log, as ``customer_id, date, amount``."""
    from features.ingest import read_event_log

    log = read_event_log(settings, ["purchase"], columns=["customer_id", "ts", "value"])
    log = log.loc[log["customer_id"].notna()]
    if log.empty:
        raise ClvDataError("events: no purchases in the event log (run `nextbest features build`)")
    when = pd.to_datetime(log["ts"], utc=True).dt.tz_convert(None).dt.normalize()
    return pd.DataFrame(
        {
            "customer_id": log["customer_id"].astype(str).to_numpy(),
            "date": when.to_numpy(),
            "amount": log["value"].fillna(0.0).to_numpy(dtype=float),
        }
    )


def profile_features(settings: Settings) -> Extra:
    """The ``clv_v1`` FeatureService's features of (customer, cutoff) rows as of the end of each
    cutoff day (Feast's point-in-time join on the weekly snapshots): the tree model's inputs
    beside RFM."""
    from training.datasets import point_in_time

    def read(keys: pd.DataFrame) -> pd.DataFrame:
        at = pd.to_datetime(keys["cutoff"]) + pd.Timedelta(days=1, microseconds=-1)
        entities = pd.DataFrame(
            {"customer_id": keys["customer_id"].to_numpy(), "event_timestamp": at}
        )
        frame = point_in_time(settings, CLV_SERVICE, entities)
        return frame.drop(columns=["customer_id", "event_timestamp"]).reset_index(drop=True)

    return read


def value_tiers(clv: pd.Series) -> pd.Series:
    """``top`` / ``middle`` / ``low`` by rank of CLV (ties share the lower rank's tier)."""
    rank = clv.rank(method="first", ascending=False) / max(len(clv), 1)
    edges = np.cumsum([share for _, share in TIERS])
    names = np.array([name for name, _ in TIERS], dtype=object)
    return pd.Series(names[np.searchsorted(edges, rank.to_numpy(), side="left")], index=clv.index)


def value_rows(predictions: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
    """The ``customer_value`` source rows: one per customer, stamped with the training day."""
    out = pd.DataFrame(
        {
            "customer_id": predictions["customer_id"].astype(str).to_numpy(),
            "event_timestamp": pd.Timestamp(at, tz="UTC") + pd.Timedelta(days=1, microseconds=-1),
            "clv_12m": predictions["expected_value"].to_numpy(dtype=float),
            "p_alive": predictions["p_alive"].to_numpy(dtype=float),
            "expected_purchases_12m": predictions["expected_purchases"].to_numpy(dtype=float),
        }
    )
    out["value_tier"] = value_tiers(out["clv_12m"]).to_numpy()
    # DuckDB fails on nanosecond tz-aware timestamps (ARCHITECTURE.md): write microseconds
    out["event_timestamp"] = out["event_timestamp"].astype("datetime64[us, UTC]")
    return out


def log_runs(settings: Settings, result: ClvResult, window: dict[str, str]) -> dict[str, str]:
    """One MLflow run per model with its validation figures; the chosen one tagged promoted."""
    import mlflow

    from training.registry import client_for, experiment_id

    client_for(settings)
    runs = {}
    for v in result.validation:
        with mlflow.start_run(experiment_id=experiment_id(settings, "clv"), run_name=v.model) as r:
            mlflow.log_params(
                {"model": v.model, "horizon_days": result.horizon_days, **result.params}
                if v.model == "btyd"
                else {"model": v.model, "horizon_days": result.horizon_days,
                      "feature_service": f"RFM + {CLV_SERVICE}"}
            )  # fmt: skip
            figures = v.model_dump(exclude={"model"})
            mlflow.log_metrics({k: float(x) for k, x in figures.items() if np.isfinite(x)})
            mlflow.set_tags(
                {
                    **window,
                    "promoted": str(v.model == result.chosen).lower(),
                    "gate": "lower per-customer MAE of purchase days on the validation window",
                }
            )
            runs[v.model] = r.info.run_id
    return runs


def train_clv(
    settings: Settings, progress: Any = None, with_profile: bool = True
) -> dict[str, Any]:
    """Fit, choose, track, and write the chosen model's CLV for the feature store."""
    from features.repo.data_sources import VALUE_PATH

    tx = event_log_transactions(settings)
    end = pd.Timestamp(tx["date"].max())
    extra = profile_features(settings) if with_profile else None
    predictions, result, _ = predict_clv(tx, end, HORIZON_DAYS, seed=settings.seed,
                                         progress=progress, extra=extra)  # fmt: skip
    window = {
        "valid_window": f"{result.validation_start}..{result.calibration_end}",
        "train_window": f"{tx['date'].min():%Y-%m-%d}..{result.validation_start}",
    }
    runs = log_runs(settings, result, window)
    rows = value_rows(predictions, end)
    path = Path(settings.feature_dir) / VALUE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rows.to_parquet(tmp, index=False)
    tmp.replace(path)
    tiers = rows.groupby("value_tier")["clv_12m"].agg(["size", "mean"]).round(2)
    return {
        **result.model_dump(),
        "mlflow_runs": runs,
        "value_file": str(path),
        "tiers": tiers.to_dict(orient="index"),
    }
