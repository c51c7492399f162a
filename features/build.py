"""Batch build: world Parquet -> identity graph -> event log -> point-in-time snapshots.

Profile columns (plan, ARPU, tenure start, contract end) come from the CRM: here, the
simulator's people table reached through each CRM identity record, and the plan history
(``plans.parquet``: plan and ARPU with the time each became valid) through the same record.
In a real deployment they come from the CRM extract and its subscription history keyed by the
CRM record. Only contract facts are read: ``true_*`` columns and latent traits are never
features. The people table's plan and ARPU are today's; snapshots read the history as of T.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.progress import Progress

from features.aggregates import (
    PLAN_HISTORY_COLUMNS,
    batch_features,
    realtime_features,
    snapshot_times,
)
from features.events import CONSENT_CHANNELS
from features.ingest import write_event_log
from features.paid_media import KEYS_PATH, keys_from_identities
from features.repo.data_sources import REALTIME_PATH, SNAPSHOT_PATH
from features.schema import IDENTITY_INPUT_COLUMNS
from features.segments import build_segments
from nextbest.settings import Settings

# Without any consent_change on record: e-mail and SMS need an opt-in (the CRM logs the sign-up
# choice as a consent_change), app messages and service calls are part of the contract.
# Ad personalisation (paid_media) needs an explicit yes too.
CONSENT_DEFAULTS = {
    "email": False,
    "sms": False,
    "app": True,
    "call_centre": True,
    "paid_media": False,
}
PROFILE_PATH = "snapshots/crm_profile.parquet"
PLANS_PATH = "snapshots/crm_plans.parquet"
CRM_PROFILE_COLUMNS = ("plan", "arpu", "tenure_start", "contract_end")
# Contract history, when the CRM extract has it: before ``renewed_at`` the contract ended at
# ``prior_contract_end``, so a snapshot before a renewal must not see the renewed end date.
CRM_HISTORY_COLUMNS = ("prior_contract_end", "renewed_at")


def _read(world_dir: Path, name: str) -> pd.DataFrame:
    path = world_dir / f"{name}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (run `nextbest simulate --out {world_dir}`)")
    return pd.read_parquet(path)


def _crm_accounts(identities: pd.DataFrame, resolved: pd.DataFrame) -> pd.DataFrame:
    """(customer_id, true_person_id): the CRM account behind each customer holding a CRM record.

    The CRM record's ``true_person_id`` stands in for the CRM's own account key here; it only
    selects the rows of contract facts, never the customer_id (that comes from the graph).
    A person with two CRM records, or a false merge, still gets one account: the first one."""
    crm = identities.loc[identities["source"] == "crm", ["record_id", "true_person_id"]]
    crm = crm.merge(resolved, on="record_id").dropna(subset=["customer_id"])
    crm = crm.sort_values("customer_id", kind="stable").drop_duplicates("customer_id")
    return crm[["customer_id", "true_person_id"]]


def crm_profile(
    identities: pd.DataFrame, resolved: pd.DataFrame, people: pd.DataFrame
) -> pd.DataFrame:
    """One profile row per customer holding a CRM record (the CRM's view of its subscribers)."""
    cols = [c for c in (*CRM_PROFILE_COLUMNS, *CRM_HISTORY_COLUMNS) if c in people.columns]
    facts = people[["person_id", *cols]].rename(columns={"person_id": "true_person_id"})
    accounts = _crm_accounts(identities, resolved)
    profile = accounts.merge(facts, on="true_person_id").drop(columns=["true_person_id"])
    for ch in CONSENT_CHANNELS:
        profile[f"consent_default_{ch}"] = CONSENT_DEFAULTS[ch]
    return profile.reset_index(drop=True)


def crm_plans(
    identities: pd.DataFrame, resolved: pd.DataFrame, plans: pd.DataFrame
) -> pd.DataFrame:
    """The plan history (customer_id, valid_from, plan, arpu) of each customer's CRM account."""
    history = plans.rename(columns={"person_id": "true_person_id"})
    out = _crm_accounts(identities, resolved).merge(history, on="true_person_id")
    out = out.sort_values(["customer_id", "valid_from"], kind="stable")
    return out[list(PLAN_HISTORY_COLUMNS)].reset_index(drop=True)


def _window(world_dir: Path, events: pd.DataFrame) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The simulated window from ``world.json`` (events also hold older sign-up records),
    else the days the events span."""
    meta = world_dir / "world.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        return pd.Timestamp(info["start"]), pd.Timestamp(info["end"])
    return pd.Timestamp(events["ts"].min()).floor("D"), pd.Timestamp(events["ts"].max()).ceil("D")


def _write(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def build_features(settings: Settings, world_dir: Path | None = None) -> dict[str, Any]:
    """Resolve identities, map events to customers, write the event log and the snapshot
    Parquet files the Feast sources read. Returns counts, paths and timings."""
    from features.identity import graph_for

    world_dir = Path(world_dir or settings.world_dir)
    settings.ensure_dirs()
    timings: dict[str, float] = {}
    with Progress(transient=True) as progress:
        task = progress.add_task("read world", total=5)  # segments and keys ride on "write"

        t = time.perf_counter()
        people, identities = _read(world_dir, "people"), _read(world_dir, "identities")
        events = _read(world_dir, "events")
        timings["read"] = time.perf_counter() - t
        progress.update(task, advance=1, description="resolve identities")

        t = time.perf_counter()
        graph = graph_for(settings)
        # source systems hold unusable values (a typo'd phone): drop them, count them
        resolved = graph.resolve(identities[list(IDENTITY_INPUT_COLUMNS)], lenient=True)
        identity_warnings = len(getattr(graph, "last_warnings", []))
        timings["resolve"] = time.perf_counter() - t
        progress.update(task, advance=1, description="map events to customers")

        t = time.perf_counter()
        events = events.drop(columns=[c for c in events.columns if c.startswith("true_")])
        events["customer_id"] = graph.map_identifiers(events).to_numpy()
        mapped = events["customer_id"].notna()
        write_event_log(settings, events.loc[mapped])
        timings["map_events"] = time.perf_counter() - t
        progress.update(task, advance=1, description="snapshot aggregates")

        t = time.perf_counter()
        profile = crm_profile(identities, resolved, people)
        history = world_dir / "plans.parquet"  # a world written before it existed has none
        plans = (
            crm_plans(identities, resolved, _read(world_dir, "plans")) if history.exists() else None
        )
        start, end = _window(world_dir, events)
        times = snapshot_times(start, end)
        batch = batch_features(events.loc[mapped], profile, times, plans)
        realtime = realtime_features(events.loc[mapped], profile, times)
        timings["aggregate"] = time.perf_counter() - t
        progress.update(task, advance=1, description="write snapshots")

        t = time.perf_counter()
        _write(batch, settings.feature_dir / SNAPSHOT_PATH)
        _write(realtime, settings.feature_dir / REALTIME_PATH)
        _write(profile, settings.feature_dir / PROFILE_PATH)  # the CRM input, for audits
        if plans is not None:
            _write(plans, settings.feature_dir / PLANS_PATH)
        timings["write"] = time.perf_counter() - t

        # issue 18: segments as of the last snapshot (preferred channels come with the models,
        # from `nextbest segments refresh`), and the paid-media keys (hashes only)
        t = time.perf_counter()
        segments = build_segments(
            settings, batch, events.loc[mapped & (events["event_type"] == "purchase")]
        )
        keys = keys_from_identities(identities, resolved, settings.region)
        _write(keys, settings.feature_dir / KEYS_PATH)
        timings["segments"] = time.perf_counter() - t
        progress.update(task, advance=1)
    return {
        "world": str(world_dir),
        "customers": int(profile["customer_id"].nunique()),
        "identity_records": len(identities),
        "resolved_customers": int(resolved["customer_id"].nunique()),
        "identity_warnings": identity_warnings,
        "events": len(events),
        "events_mapped": int(mapped.sum()),
        "snapshots": [t.isoformat() for t in times],
        "rows": len(batch),
        "feature_file": str(settings.feature_dir / SNAPSHOT_PATH),
        "realtime_file": str(settings.feature_dir / REALTIME_PATH),
        "profile_file": str(settings.feature_dir / PROFILE_PATH),
        "plans_file": None if plans is None else str(settings.feature_dir / PLANS_PATH),
        "plan_changes": 0 if plans is None else len(plans) - int(plans["customer_id"].nunique()),
        "event_log": str(settings.event_log_dir / "batch.parquet"),
        "segments": int(segments["cluster"].nunique()),
        "paid_media_keys": len(keys),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
