"""The report's experiment units, from the decision ledger and from a simulated world.

The units and their outcomes are attributed by :mod:`record.attribution` (the one rule);
this module only finds the data: the ledger's decisions and orders, the world's campaigns and
purchase events, the identity graph that resolves them, and the offer catalogue's names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from record.attribution import ORDER_TYPES, attribute, first_exposures, orders, sane_rows, to_utc

COLUMNS = ["experiment", "customer_id", "arm", "ts", "offer_id", "channel", "segment",
           "converted", "converted_at", "revenue", "source"]  # fmt: skip


class ReportError(RuntimeError):
    """Nothing to report on; the message says which data were looked for and where."""


def _segment(context: Any, scores: Any) -> str | None:
    """A decision's segment: the channel's own label, else the plan feature it was decided on."""
    if isinstance(context, dict) and context.get("segment"):
        return str(context["segment"])
    features = scores.get("features") if isinstance(scores, dict) else None
    plan = features.get("plan") if isinstance(features, dict) else None
    return str(plan) if plan else None


def skipped_note(skipped: dict[str, int]) -> str:
    """``rows skipped: 3 (outcome time out of range: 1; ...)``, or "" when none was."""
    if not skipped:
        return ""
    why = "; ".join(f"{reason}: {n}" for reason, n in skipped.items())
    return f"rows skipped: {sum(skipped.values())} ({why})"


def ledger_units(
    engine,
    window_days: float = 30,
    customer_map: Mapping[str, str] | None = None,
    max_value: float = math.inf,
) -> pd.DataFrame:
    """Experiment units from the decision ledger: decisions x orders (each order once).

    A unit converted when a conversion order of the person falls in its window; its revenue is
    the value of every order in it (what the bandit's ``spend`` reward counts). Orders are keyed
    by person, not by decision, so an order reported on another channel still counts. A unit is
    the person's first assignment whatever happened to the message (intent to treat): dropping
    treated people whose message a purchase cancelled would drop the quickest buyers from one
    arm only, since the holdout's would-be-cancelled messages cannot be known.
    Rows no report can count are skipped (:func:`sane_rows`), counted in ``attrs["skipped"]``.
    """
    from sqlalchemy import inspect

    from record.ledger import Ledger

    if not inspect(engine).has_table("decisions"):
        return pd.DataFrame()
    ledger = Ledger(engine, create=False)
    decisions, outcomes, skipped = sane_rows(ledger.logs(), ledger.outcomes_frame(), max_value)
    if decisions.empty:
        return _empty_with(skipped)
    bought = orders(outcomes)
    bought = bought[bought["type"].isin(ORDER_TYPES)]
    conv = bought[bought["type"] == "conversion"]
    units = attribute(decisions, conv, window_days, customer_map=customer_map)
    paid = attribute(decisions, bought, window_days, customer_map=customer_map)
    units["revenue"] = paid["revenue"].to_numpy()
    units["segment"] = [
        _segment(c, sc) for c, sc in zip(units["context"], units["scores"], strict=True)
    ]
    units.attrs["skipped"] = skipped
    return units


def _empty_with(skipped: dict[str, int]) -> pd.DataFrame:
    empty = pd.DataFrame()
    empty.attrs["skipped"] = skipped
    return empty


def _safe_map(
    customer_ids: Callable[[pd.DataFrame], pd.Series] | None, frame: pd.DataFrame
) -> pd.Series | None:
    """Resolved ids, or None when there is no usable identity graph (tables not built yet)."""
    if customer_ids is None:
        return None
    try:
        return pd.Series(customer_ids(frame).to_numpy(), index=frame.index)
    except Exception:  # noqa: BLE001 - any graph failure means: use the campaign flag instead
        return None


def _raw_key(exposures: pd.DataFrame) -> pd.Series:
    """The identifier a campaign used for a person (email first), as a stand-in customer key."""
    key = exposures["exposure_id"].astype(str)
    for col in ("cookie_id", "login_id", "phone", "email"):
        if col in exposures:
            key = exposures[col].fillna(key)
    return key


def world_units(
    world_dir: Path,
    window_days: int = 30,
    customer_ids: Callable[[pd.DataFrame], pd.Series] | None = None,
    products: dict[str, str | None] | None = None,
) -> pd.DataFrame:
    """Experiment units from a simulated world, before the service has run.

    ``customer_ids`` maps a frame with identifier columns to resolved customer ids (the identity
    graph's ``map_identifiers``). With it, exposures and purchase events are joined by person and
    attributed here (a purchase of the offer's product, from ``products``: offer id -> product
    id); without it the campaign system's own ``converted`` flag is used as is.
    """
    exposures = pd.read_parquet(Path(world_dir) / "exposures.parquet")
    exposures = exposures.rename(columns={"campaign_id": "experiment"})
    events_path = Path(world_dir) / "events.parquet"
    mapped = _safe_map(customer_ids, exposures) if events_path.exists() else None
    # an identity graph that knows under half of the campaign's people has not resolved this world
    if mapped is not None and mapped.notna().mean() >= 0.5:
        # unresolved exposures stay in the experiment under their own identifier: dropping them
        # would change who is measured; they simply cannot collect outcomes from other ids
        exposures["customer_id"] = mapped.fillna("unresolved:" + _raw_key(exposures)).to_numpy()
        events = pd.read_parquet(events_path)
        purchases = events[events["event_type"] == "purchase"].copy()
        purchases["customer_id"] = customer_ids(purchases).to_numpy()
        exposures["product_id"] = exposures["offer_id"].map(products or {})
        units = attribute(exposures, purchases, window_days, match_product=bool(products))
        units.attrs["outcome_source"] = "purchase events attributed by resolved customer id"
        return units
    # one campaign touches a person through one identifier, so it serves as the unit key
    exposures["customer_id"] = _raw_key(exposures)
    units = first_exposures(exposures)
    units["converted"] = units["converted"].astype(bool)
    units["converted_at"] = to_utc(units["converted_at"])
    units["revenue"] = 0.0
    units.attrs["outcome_source"] = "the campaign system's own converted flag (no identity graph)"
    return units


def offer_catalog() -> dict[str, Any]:
    try:
        from offers.catalog import load_catalog

        return {o.id: o for o in load_catalog().offers}
    except Exception:  # noqa: BLE001 - the report still works with bare offer ids
        return {}


def _identity_mapper(settings: Any):
    """The identity graph's vectorised lookup, when a ledger database (and graph) exists."""
    url = settings.ledger_db_url
    if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).exists():
        return None
    try:
        from features.identity import graph_for

        return graph_for(settings).map_identifiers
    except Exception:  # noqa: BLE001 - no graph yet: attribution falls back to the campaign flag
        return None


def _merged_ids(settings: Any) -> dict[str, str] | None:
    """Merged-away customer id -> the person's id now, from the identity graph, if there is one."""
    try:
        from features.identity import graph_for

        return graph_for(settings).canonical_ids()
    except Exception:  # noqa: BLE001 - no graph: ids stay as the decisions recorded them
        return None


def load_units(settings: Any, world_dir: Path | None = None) -> tuple[pd.DataFrame, list[str], str]:
    """Experiment units from the ledger and the world, in one frame with a ``source`` column."""
    frames, sources, outcome_sources = [], [], []
    url, days = settings.ledger_db_url, settings.attribution_days
    if not url.startswith("sqlite") or Path(url.split("///", 1)[-1]).exists():
        from nextbest.db import engine_for

        try:
            top = settings.max_money_value
            units = ledger_units(engine_for(url), days, _merged_ids(settings), top)
        except Exception as exc:  # noqa: BLE001 - an unreadable ledger is reported, not fatal
            units = pd.DataFrame()
            sources.append(f"decision ledger unreadable ({type(exc).__name__})")
        skipped = skipped_note(units.attrs.get("skipped", {}))
        if not units.empty:
            frames.append(units.assign(source="ledger"))
            note = f"; {skipped}" if skipped else ""
            sources.append(f"decision ledger ({len(units)} experiment units{note})")
            outcome_sources.append("ledger outcomes by customer id")
        elif skipped:
            sources.append(f"decision ledger (no experiment units; {skipped})")
    world = Path(world_dir or settings.world_dir)
    if (world / "exposures.parquet").exists():
        products = {k: o.product_id for k, o in offer_catalog().items()}
        units = world_units(world, days, _identity_mapper(settings), products)
        if (world / "people.parquet").exists() and "true_person_id" in units:
            plan = pd.read_parquet(world / "people.parquet", columns=["person_id", "plan"])
            units["segment"] = units["true_person_id"].map(plan.set_index("person_id")["plan"])
        frames.append(units.assign(source="world"))
        sources.append(f"simulated campaigns in {world} ({len(units)} experiment units)")
        outcome_sources.append(units.attrs.get("outcome_source", ""))
    if not frames:
        raise ReportError(
            f"nothing to report: no decisions in the ledger ({url}) and no exposures.parquet in "
            f"{world}; run `nextbest simulate` or the decision service first"
        )
    units = pd.concat([f.reindex(columns=COLUMNS) for f in frames], ignore_index=True)
    units["converted"] = units["converted"].fillna(False).astype(bool)
    units["revenue"] = units["revenue"].fillna(0.0).astype(float)
    units["ts"] = pd.to_datetime(units["ts"], utc=True)
    units["converted_at"] = pd.to_datetime(units["converted_at"], utc=True)
    return units, sources, "; ".join(s for s in outcome_sources if s)
