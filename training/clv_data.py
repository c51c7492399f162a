"""Transactions for customer lifetime value: read, validate, cut at a date, summarise.

Everything here is point in time: a summary "as of" a cutoff sees only purchases on or before
that day, and same-day purchases count as one purchase day whose amount is their sum (the
convention of the BG/NBD literature, and of ``lifetimes``/``pymc-marketing``'s
``rfm_summary``). Days are the time unit throughout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DAY = pd.Timedelta(days=1)
SUMMARY_COLUMNS = ("frequency", "recency", "T", "monetary_value")


class ClvDataError(ValueError):
    """Transactions that cannot be used, with the field and the reason in one line."""


def read_transactions(
    path: Path,
    customer: str,
    date: str,
    amount: str,
    calibration_end: pd.Timestamp,
) -> pd.DataFrame:
    """``customer_id, date, amount`` of the purchases on or before ``calibration_end``.

    Later rows are dropped right after their date is parsed, before any other use, so nothing
    that happened after the calibration end can leak into a model or an output row."""
    if not Path(path).exists():
        raise ClvDataError(f"csv: {path} does not exist")
    try:
        raw = pd.read_csv(path, dtype={customer: str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise ClvDataError(f"csv: {path} is not readable as CSV ({exc})") from None
    for flag, col in (("customer", customer), ("date", date), ("amount", amount)):
        if col not in raw.columns:
            cols = ", ".join(map(str, raw.columns[:12]))
            raise ClvDataError(f"{flag}: column '{col}' is not in {path} (columns: {cols})")
    if raw.empty:
        raise ClvDataError(f"csv: {path} has no rows")
    when = pd.to_datetime(raw[date], errors="coerce", format="mixed")
    bad = when.isna()
    if bad.any():
        first = raw.loc[bad, date].iloc[0]
        raise ClvDataError(
            f"date: {int(bad.sum())} value(s) of column '{date}' are not dates (first: {first!r})"
        )
    if getattr(when.dt, "tz", None) is not None:
        when = when.dt.tz_convert(None)
    keep = (when.dt.normalize() <= calibration_end).to_numpy()
    raw, when = raw.loc[keep], when.loc[keep]
    if raw.empty:
        raise ClvDataError(
            f"calibration-end: no transaction on or before {calibration_end:%Y-%m-%d}"
        )
    value = pd.to_numeric(raw[amount], errors="coerce")
    bad = value.isna() | ~np.isfinite(value) | (value < 0)
    if bad.any():
        first = raw.loc[bad, amount].iloc[0]
        raise ClvDataError(
            f"amount: {int(bad.sum())} value(s) of column '{amount}' are not non-negative "
            f"numbers (first: {first!r})"
        )
    ids = raw[customer]
    if ids.isna().any():
        raise ClvDataError(f"customer: {int(ids.isna().sum())} empty value(s) in '{customer}'")
    return pd.DataFrame(
        {
            "customer_id": ids.astype(str).str.strip().to_numpy(),
            "date": when.dt.normalize().to_numpy(),
            "amount": value.to_numpy(dtype=float),
        }
    )


def purchase_days(transactions: pd.DataFrame) -> pd.DataFrame:
    """One row per customer and day with a purchase: same-day purchases are one, amounts summed."""
    days = transactions.assign(date=pd.to_datetime(transactions["date"]).dt.normalize())
    out = days.groupby(["customer_id", "date"], as_index=False, sort=True)["amount"].sum()
    return out


def summary_at(days: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """RFM summary as of the end of ``cutoff`` for customers seen by then (index customer_id).

    ``frequency`` repeat purchase days, ``recency`` days from first to last, ``T`` days from first
    to the cutoff, ``monetary_value`` mean amount of the repeat days (0 when none): the BG/NBD and
    Gamma-Gamma inputs. Extra point-in-time features ride along for the LightGBM model."""
    seen = days.loc[days["date"] <= cutoff]
    g = seen.groupby("customer_id", sort=True)
    first, last = g["date"].min(), g["date"].max()
    n, total = g["date"].size(), g["amount"].sum()
    first_amount = g["amount"].first()  # rows are sorted by date within each customer
    out = pd.DataFrame(
        {
            "frequency": (n - 1).astype(float),
            "recency": (last - first).dt.days.astype(float),
            "T": (cutoff - first).dt.days.astype(float),
        }
    )
    repeat_total = total - first_amount
    out["monetary_value"] = np.where(n > 1, repeat_total / (n - 1).clip(lower=1), 0.0)
    out["first_amount"] = first_amount
    out["total_spend"] = total
    out["days_since_last"] = out["T"] - out["recency"]
    for window in (30, 90):
        recent = seen.loc[seen["date"] > cutoff - window * DAY].groupby("customer_id")
        out[f"purchase_days_{window}d"] = recent.size().reindex(out.index, fill_value=0)
        out[f"spend_{window}d"] = recent["amount"].sum().reindex(out.index, fill_value=0.0)
    out["mean_gap"] = np.where(n > 1, out["recency"] / out["frequency"].clip(lower=1), np.nan)
    out.index.name = "customer_id"
    return out


def outcomes_between(
    days: pd.DataFrame, customers: pd.Index, start: pd.Timestamp, horizon_days: int
) -> pd.DataFrame:
    """Purchase days and spend of each customer in (start, start + horizon]: the label of a
    window (or the truth of a holdout), zero for customers with none."""
    end = start + horizon_days * DAY
    window = days.loc[(days["date"] > start) & (days["date"] <= end)]
    g = window.groupby("customer_id")
    return pd.DataFrame(
        {
            "purchases": g.size().reindex(customers, fill_value=0).astype(float),
            "spend": g["amount"].sum().reindex(customers, fill_value=0.0),
        }
    )
