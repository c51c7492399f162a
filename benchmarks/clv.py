"""CLV on CDNOW: both models against what happened after the calibration end.

The models see only the purchases up to the calibration end (``training.clv.predict_clv``, the
same code as ``nextbest clv predict``); the holdout is read here, after they have predicted.
Floors measured in the same run: BG/NBD itself (the classic benchmark) and a naive rate
(each customer's past repeat purchase-day rate times the horizon, times their mean
purchase-day amount).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.clv import predict_clv, score
from training.clv_data import outcomes_between, purchase_days, read_transactions, summary_at

CDNOW = "cdnow/cdnow_sample.csv.gz"
CALIBRATION_END = "1997-09-30"
HORIZON_DAYS = 273
# ../shared/data/README.md: lifetimes' BG/NBD on the same split
REFERENCE = {"mae_purchases": 0.786, "predicted_purchases": 1653, "actual_purchases": 1882}


def default_csv() -> Path:
    """Where the CDNOW sample lives in this workspace (NEXTBEST_SHARED_DATA overrides)."""
    root = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return Path(os.environ.get("NEXTBEST_SHARED_DATA", root)) / CDNOW


def bench_clv(
    csv: Path,
    calibration_end: str = CALIBRATION_END,
    horizon_days: int = HORIZON_DAYS,
    progress: Any = None,
) -> dict[str, Any]:
    """Predict from the calibration data, then score both models and the floors on the holdout."""
    end = pd.Timestamp(calibration_end)
    t0 = time.perf_counter()
    tx = read_transactions(csv, "customer_id", "date", "amount", end)
    out, result, both = predict_clv(tx, end, horizon_days, progress=progress)
    seconds = time.perf_counter() - t0
    everything = pd.read_csv(csv, dtype={"customer_id": str}, parse_dates=["date"])
    days = purchase_days(everything.assign(customer_id=everything["customer_id"].str.strip()))
    customers = pd.Index(out["customer_id"], name="customer_id")
    truth = outcomes_between(days, customers, end, horizon_days)
    summary = summary_at(days, end).reindex(customers)
    rate = (summary["frequency"] / summary["T"].clip(lower=1)).to_numpy() * horizon_days
    per_day = (summary["total_spend"] / (summary["frequency"] + 1)).to_numpy()
    naive = pd.DataFrame({"expected_purchases": rate, "expected_value": rate * per_day})
    rows = {
        name: score(name, pred.reindex(customers), truth).model_dump()
        for name, pred in both.items()
    }
    rows["naive_rate"] = score("btyd", naive.set_index(customers), truth).model_dump()
    rows["naive_rate"]["model"] = "naive_rate"
    btyd_mae = rows["btyd"]["mae_purchases"]
    for row in rows.values():
        row["mae_vs_btyd"] = round(row["mae_purchases"] / btyd_mae, 4)
        row["mae_vs_reference"] = round(row["mae_purchases"] / REFERENCE["mae_purchases"], 4)
    return {
        "data": str(csv),
        "calibration_end": calibration_end,
        "horizon_days": horizon_days,
        "customers": len(out),
        "chosen": result.chosen,
        "validation": [v.model_dump() for v in result.validation],
        "holdout": list(rows.values()),
        "btyd_params": result.params,
        "reference_lifetimes": REFERENCE,
        "goal": {
            "mae_at_most": round(REFERENCE["mae_purchases"] * 0.95, 4),
            "totals_within_pct": 5.0,
            "met_by": [
                r["model"]
                for r in rows.values()
                if r["mae_purchases"] <= REFERENCE["mae_purchases"] * 0.95
                and abs(r["purchases_error_pct"]) <= 5
                and abs(r["spend_error_pct"]) <= 5
            ],
        },
        "seconds": round(seconds, 1),
        "fit_seconds": result.seconds,
        "note": "timings on a shared, heavily loaded 2-core machine (pessimistic)",
        "mean_actual_purchases": round(float(np.mean(truth["purchases"])), 4),
    }


def customer_persons(settings: Any, world_dir: Path) -> pd.Series:
    """Each resolved customer's true person: the person behind most of its identity records
    (a false merge keeps its majority; the truth is a person's, the prediction a customer's)."""
    from features.identity import graph_for

    ids = pd.read_parquet(Path(world_dir) / "identities.parquet")
    ids["customer_id"] = graph_for(settings).map_identifiers(ids).to_numpy()
    pairs = ids.dropna(subset=["customer_id"]).groupby(["customer_id", "true_person_id"]).size()
    best = pairs.sort_values(ascending=False, kind="stable").reset_index()
    return best.drop_duplicates("customer_id").set_index("customer_id")["true_person_id"]


def bench_clv_profile(settings: Any, world_dir: Path, progress: Any = None) -> dict[str, Any]:
    """What ``nextbest clv train`` does (resolved customers from the event log, the tree model
    with the ``clv_v1`` profile features from Feast), scored against the true 12-month value."""
    from simulator.truth import Truth
    from simulator.value import true_future_value
    from training.clv_world import HORIZON_DAYS, event_log_transactions, profile_features

    tx = event_log_transactions(settings)
    end = pd.Timestamp(tx["date"].max())
    out, result, both = predict_clv(
        tx, end, HORIZON_DAYS, seed=settings.seed, progress=progress,
        extra=profile_features(settings),
    )  # fmt: skip
    person = customer_persons(settings, world_dir).reindex(out["customer_id"])
    known = person.notna().to_numpy()
    truth = true_future_value(Truth.load(world_dir), person[known].to_numpy(), HORIZON_DAYS)
    true_value = pd.Series(truth["true_value"].to_numpy(), index=person.index[known])
    rows = []
    for name, pred in both.items():
        v = pred["expected_value"].reindex(true_value.index)
        rows.append(
            {
                "model": name,
                "spearman_value": round(float(v.corr(true_value, "spearman")), 4),
                "pearson_value": round(float(v.corr(true_value)), 4),
                "predicted_total": round(float(v.sum()), 1),
                "true_total": round(float(true_value.sum()), 1),
            }
        )
    return {
        "world": str(world_dir),
        "history_end": f"{end:%Y-%m-%d}",
        "horizon_days": HORIZON_DAYS,
        "customers_with_purchases": len(out),
        "customers_scored": int(known.sum()),
        "chosen": result.chosen,
        "validation": [v.model_dump() for v in result.validation],
        "truth": rows,
        "seconds": result.seconds,
    }
