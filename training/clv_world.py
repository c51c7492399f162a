"""``nextbest clv train``: CLV of every customer with purchases in the event log, both models
registered in MLflow, the champion's figures written to the ``customer_value`` feature view.

The models see the resolved customers' purchases (the same event log Feast's views are built
from), as of the last day of the log, and predict 365 days ahead. Each is one MLflow run in the
``nextbest-clv`` experiment and one version of the registered model ``clv``
(:mod:`training.clv_registry`); the one with the lower validation MAE is aliased ``champion``,
and only the champion's predictions reach the profile (``clv_12m``, ``p_alive``,
``value_tier`` of ``profile_v2``), so promoting the other version changes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nextbest.settings import Settings
from training.clv import Extra, predict_clv
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


def champion_values(settings: Settings, tx: pd.DataFrame | None = None) -> dict[str, Any]:
    """Score every customer of the event log with the registered ``clv`` champion, as of the
    log's last day, and write the ``customer_value`` rows: what the profile's ``clv_12m`` is."""
    from features.repo.data_sources import VALUE_PATH
    from training.clv import features_at
    from training.clv_data import purchase_days
    from training.clv_registry import load_alias

    tx = event_log_transactions(settings) if tx is None else tx
    end = pd.Timestamp(tx["date"].max())
    version, model = load_alias(settings)
    extra = profile_features(settings) if model.trees is not None else None
    summary = features_at(purchase_days(tx), end, extra)
    predictions = model.predict(summary, HORIZON_DAYS).reset_index()
    rows = value_rows(predictions, end)
    path = Path(settings.feature_dir) / VALUE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rows.to_parquet(tmp, index=False)
    tmp.replace(path)
    tiers = rows.groupby("value_tier")["clv_12m"].agg(["size", "mean"]).round(2)
    return {
        "scored_by": f"clv:{version} ({model.kind})",
        "value_file": str(path),
        "tiers": tiers.to_dict(orient="index"),
    }


def materialize_values(settings: Settings) -> None:
    """Load the ``customer_value`` rows into the online store (a simulated world may lie
    years ahead of the wall clock, so the window is wide)."""
    import contextlib
    import sys
    from datetime import UTC, datetime, timedelta

    from features.store import get_store

    end = datetime.now(UTC) + timedelta(days=3650)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for --json
        get_store(settings).materialize(
            end - timedelta(days=7300), end, feature_views=["customer_value"]
        )


def train_clv(
    settings: Settings, progress: Any = None, with_profile: bool = True
) -> dict[str, Any]:
    """Fit both, register both (the better champion), and write the champion's CLV for the
    feature store."""
    from training.clv_registry import ClvModel, register

    tx = event_log_transactions(settings)
    end = pd.Timestamp(tx["date"].max())
    extra = profile_features(settings) if with_profile else None
    fitted: dict[str, Any] = {}
    _, result, _ = predict_clv(tx, end, HORIZON_DAYS, seed=settings.seed, progress=progress,
                               extra=extra, fitted=fitted)  # fmt: skip
    window = {
        "valid_window": f"{result.validation_start}..{result.calibration_end}",
        "train_window": f"{tx['date'].min():%Y-%m-%d}..{result.validation_start}",
    }
    models = {"btyd": ClvModel("btyd", fitted["btyd"])}
    if fitted["trees"] is not None:
        models["lightgbm"] = ClvModel("lightgbm", fitted["btyd"], fitted["trees"])
    registered = register(settings, result, models, window, HORIZON_DAYS)
    if progress is not None:
        progress("scoring every customer with the registered champion")
    return {**result.model_dump(), "registered": registered, **champion_values(settings, tx)}
