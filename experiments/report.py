"""The marketers' uplift report: what each experiment, offer, channel and segment added over
doing nothing, with honest intervals, as one self-contained HTML file and the same numbers as JSON.

Data: live experiments from the decision ledger and past campaigns of the simulated world
(``exposures.parquet``), attributed over ``settings.attribution_days``. This module computes
every number (``build_report``); ``experiments.report_charts`` draws them: ``report_html`` is
what the service serves at ``GET /reports``, ``write_report`` what ``nextbest report`` runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from estimation.uplift import ArmComparison, compare
from estimation.uplift_stats import holm
from experiments.journeys import JourneyResult, evaluate, journey_definitions, journey_frames
from experiments.qini import QiniCurve, report_curves
from experiments.report_ope import PolicyEstimate, ope_estimates
from experiments.report_units import ReportError, load_units, offer_catalog
from record.assignment import HoldoutShares, holdout_shares

__all__ = ["ReportError", "ReportData", "build_report"]

DIMENSIONS = {
    "experiment": "Experiment",
    "offer_id": "Offer",
    "channel": "Channel",
    "segment": "Segment",
    "value_tier": "Value tier",
}
CHANNEL_NAMES = {"sms": "SMS", "email": "e-mail", "app": "app", "web": "web", "store": "store",
                 "call_centre": "call centre", "paid_media": "paid media"}  # fmt: skip


class Line(BaseModel):
    dimension: str
    key: str
    label: str
    n_treated: int
    n_holdout: int
    conversion: ArmComparison | None
    revenue: ArmComparison | None
    verdict: str


class CumulativeSeries(BaseModel):
    experiment: str
    dates: list[str]
    treated: list[float]
    holdout: list[float]


class ReportData(BaseModel):
    generated_at: str
    sources: list[str]
    outcome_source: str
    window_days: int
    alpha: float
    holdouts: HoldoutShares  # the service's experiments: who is held out, global included
    n_units: int
    lines: list[Line]
    cumulative: list[CumulativeSeries]
    qini: list[QiniCurve]
    qini_source: str
    ope: list[PolicyEstimate]
    ope_note: str
    journeys: list[JourneyResult] = []
    journeys_note: str = ""


def verdict(
    label: str, comp: ArmComparison | None, window: int, reason: str = "", family: int = 1
) -> str:
    """One sentence a marketer can act on, consistent with the table's Holm-adjusted p-value."""
    if comp is None or comp.ci is None:
        return f"{label}: {reason or (comp.note if comp else '')}"
    text = (
        f"{label}: {100 * comp.lift:+.1f} points of {window}-day conversion, 95% CI "
        f"{100 * comp.ci.low:+.1f} to {100 * comp.ci.high:+.1f}; {comp.baseline.mean:.0%} of "
        f"holdout customers converted on their own"
    )
    excludes_zero = comp.ci.low > 0 or comp.ci.high < 0
    p_small = comp.p_value is not None and comp.p_value < 0.05
    if p_small != excludes_zero:  # the test and the interval disagree: small counts
        text += (
            f". Not conclusive yet: the test (p = {comp.p_value:.2f}) and the interval disagree "
            "at this sample size."
        )
    elif comp.significant:
        text += ". A real gain." if comp.lift > 0 else ". It costs conversions."
    elif p_small:
        text += (
            f". Promising, but not significant once corrected for the {family} lines compared "
            f"(Holm p = {comp.p_adjusted:.2f})."
        )
    else:
        text += ". No effect distinguishable from zero yet."
    small = min(min(g.total, g.n - g.total) for g in (comp.treated, comp.baseline))
    if small < 10:
        text += " Few conversions in a group, so the interval is approximate."
    return text


def _label(dimension: str, key: str, units: pd.DataFrame, offers: dict[str, Any]) -> str:
    if dimension == "offer_id":
        return offers[key].name if key in offers else key
    if dimension == "experiment":
        treated = units[units["arm"] == "treatment"]
        if treated["offer_id"].nunique() == 1 and treated["channel"].nunique() == 1:
            offer = treated["offer_id"].iloc[0]
            name = offers[offer].name if offer in offers else offer
            channel = treated["channel"].iloc[0]
            return f"{key} ({name}, {CHANNEL_NAMES.get(channel, channel)})"
    if dimension == "channel":
        name = CHANNEL_NAMES.get(key, key.replace("_", " "))
        return name[0].upper() + name[1:]
    return key


def lines(units: pd.DataFrame, window: int, alpha: float) -> list[Line]:
    """Treated against holdout for every value of every dimension; Holm within a dimension."""
    offers, out = offer_catalog(), []
    for dim in DIMENSIONS:
        if dim not in units:  # value_tier: only once build_report has added it
            continue
        batch: list[Line] = []
        for key in sorted(units[dim].dropna().astype(str).unique()):
            part = units[units[dim].astype(str) == key]
            t, h = part[part["arm"] == "treatment"], part[part["arm"] == "holdout"]
            if h.empty:  # holdout decisions carry no offer: compare with their experiments' holdout
                h = units[(units["arm"] == "holdout") & units["experiment"].isin(t["experiment"])]
            label = _label(dim, key, part, offers)
            conv = rev = None
            reason = ""
            if t.empty or h.empty:
                reason = (
                    f"no {'treated' if t.empty else 'holdout'} customers: lift cannot be measured"
                )
            else:
                conv = compare(
                    "treatment",
                    "holdout",
                    t["converted"].to_numpy(float),
                    h["converted"].to_numpy(float),
                    True,
                    alpha,
                )
                if units["revenue"].sum() > 0:
                    rev = compare(
                        "treatment",
                        "holdout",
                        t["revenue"].to_numpy(float),
                        h["revenue"].to_numpy(float),
                        False,
                        alpha,
                    )
            batch.append(
                Line(
                    dimension=dim,
                    key=key,
                    label=label,
                    n_treated=len(t),
                    n_holdout=len(h),
                    conversion=conv,
                    revenue=rev,
                    verdict=reason,
                )
            )
        for metric in ("conversion", "revenue"):
            comps = [getattr(line, metric) for line in batch]
            adjusted = holm([c.p_value if c else None for c in comps])
            for c, p in zip(comps, adjusted, strict=True):
                if c is not None:
                    c.p_adjusted, c.significant = p, p is not None and p < alpha
        for line in batch:
            line.verdict = verdict(line.label, line.conversion, window, line.verdict, len(batch))
        out += batch
    return out


def cumulative(units: pd.DataFrame, top: int = 6) -> list[CumulativeSeries]:
    """Conversion so far among customers exposed so far, per arm and day, biggest experiments."""
    series = []
    for exp in units["experiment"].value_counts().index[:top]:
        part = units[units["experiment"] == exp]
        end = max(
            part["ts"].max(),
            part["converted_at"].max() if part["converted"].any() else part["ts"].max(),
        )
        days = pd.date_range(part["ts"].min().floor("D"), end.floor("D"), freq="D")
        curves = {}
        for arm in ("treatment", "holdout"):
            g = part[part["arm"] == arm]
            exposed = np.searchsorted(np.sort(g["ts"].dt.floor("D")), days, side="right")
            conv_days = np.sort(g.loc[g["converted"], "converted_at"].dt.floor("D"))
            converted = np.searchsorted(conv_days, days, side="right")
            curves[arm] = np.where(exposed > 0, converted / np.maximum(exposed, 1), 0.0)
        series.append(
            CumulativeSeries(
                experiment=str(exp),
                dates=[d.date().isoformat() for d in days],
                treated=curves["treatment"].round(6).tolist(),
                holdout=curves["holdout"].round(6).tolist(),
            )
        )
    return series


def journey_results(settings: Any, alpha: float = 0.05) -> tuple[list[JourneyResult], str]:
    """Every journey that ran in the ledger, against its holdout; or why there is none."""
    url = settings.ledger_db_url
    if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).exists():
        return [], "No journey ran: there is no decision ledger yet."
    from nextbest.db import engine_for

    try:
        engine = engine_for(url)
        units, steps = journey_frames(engine)
        results = evaluate(units, steps, journey_definitions(engine) if len(units) else {}, alpha)
    except Exception as exc:  # noqa: BLE001 - an unreadable ledger is reported, not fatal
        return [], f"Journeys could not be read from the ledger ({type(exc).__name__}: {exc})."
    if not results:
        return [], "No journey ran: the ledger holds no journey instances."
    for r in results:
        window = round(r.window_days) if r.window_days else settings.attribution_days
        r.verdict = verdict(r.journey, r.lift, window, r.note)
    n = sum(r.treated.entered + r.holdout.entered for r in results)
    note = (
        f"{len(results)} journeys, {n} instances (treated and held out) from the decision "
        "ledger. Lift is intent to treat: every treated instance counts, whatever became of its "
        "messages; holdout instances got nothing and are followed over the same goal window."
    )
    return results, note


def with_value_tier(units: pd.DataFrame, settings: Any) -> pd.DataFrame:
    """Each unit's customer value tier (top / middle / low by ``clv_12m``) as of the latest
    ``nextbest clv train``: a grouping of today's base, not the value when a unit was decided;
    none when CLV was never trained."""
    from features.repo.data_sources import VALUE_PATH

    path = Path(settings.feature_dir) / VALUE_PATH
    units = units.copy()
    units["value_tier"] = None
    if path.exists() and "customer_id" in units:
        tiers = pd.read_parquet(path, columns=["customer_id", "value_tier"])
        units["value_tier"] = units["customer_id"].map(tiers.set_index("customer_id")["value_tier"])
    return units


def build_report(settings: Any = None, world_dir: Path | None = None) -> ReportData:
    """Every number of the report, from the ledger and the world."""
    from nextbest.settings import get_settings

    settings = settings or get_settings()
    units, sources, outcome_source = load_units(settings, world_dir)
    units = with_value_tier(units, settings)
    window, alpha = settings.attribution_days, 0.05
    curves, qini_source = report_curves(units, settings)
    policies, ope_note = ope_estimates(settings)
    journeys, journeys_note = journey_results(settings, alpha)
    return ReportData(
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        sources=sources,
        outcome_source=outcome_source,
        window_days=window,
        alpha=alpha,
        holdouts=holdout_shares(settings),
        n_units=len(units),
        lines=lines(units, window, alpha),
        cumulative=cumulative(units),
        qini=curves,
        qini_source=qini_source,
        ope=policies,
        ope_note=ope_note,
        journeys=journeys,
        journeys_note=journeys_note,
    )
