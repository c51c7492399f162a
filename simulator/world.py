"""Orchestration: people, joiners, identities, lifecycle, activity, campaigns, comebacks ->
Parquet.

Each stage draws from its own child seed, so changing one stage does not reshuffle the others
and a seed always gives byte-identical tables.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from features.schema import (
    EVENT_COLUMNS,
    EXPOSURE_COLUMNS,
    IDENTITY_COLUMNS,
    PEOPLE_COLUMNS,
    PLAN_COLUMNS,
)
from offers.catalog import Catalog, load_catalog
from simulator.buffer import EventBuffer
from simulator.calibration import calibration
from simulator.campaigns import HOLDOUT_SHARE, simulate_campaigns
from simulator.clock import START_US, US_PER_DAY, WORLD_START, to_timestamp
from simulator.comebacks import CONTACT_TYPES, add_comebacks, comeback_rate
from simulator.events import simulate_activity
from simulator.identities import Keys, make_identities
from simulator.joiners import pick_joiners, sign_up_events
from simulator.lifecycle import simulate_lifecycle, simulate_plan_changes
from simulator.people import make_people, static_plans
from simulator.response import OFFER_IDS, WINDOW_DAYS

TABLES = ("people", "identities", "events", "exposures", "plans")
STAGES = ("people", "joiners", "identities", "plans", "lifecycle", "activity", "campaigns",
          "comebacks", "assemble")  # fmt: skip
# Child seeds in the order stages were added (not run): a new stage takes a new child, so the
# earlier stages keep drawing exactly what they drew before it existed.
SEEDED_STAGES = ("people", "identities", "lifecycle", "activity", "campaigns", "comebacks",
                 "assemble", "plans", "joiners")  # fmt: skip


@dataclass
class World:
    """The simulated world in memory; timestamps are tz-aware microsecond columns."""

    people: pd.DataFrame
    identities: pd.DataFrame
    events: pd.DataFrame
    exposures: pd.DataFrame
    plans: pd.DataFrame  # the CRM's plan and ARPU history (valid_from); people hold the latest
    meta: dict[str, Any] = field(default_factory=dict)
    keys: Keys | None = None

    def tables(self) -> dict[str, pd.DataFrame]:
        return {t: getattr(self, t) for t in TABLES}


def build_world(
    customers: int, days: int, seed: int, catalog: Catalog | None = None, progress: bool = False
) -> World:
    """Simulate a world in memory."""
    if customers < 1:
        raise ValueError(f"customers: must be at least 1, got {customers}")
    if days < 1:
        raise ValueError(f"days: must be at least 1, got {days}")
    if seed < 0:
        raise ValueError(f"seed: must be >= 0, got {seed}")
    catalog = catalog or load_catalog()
    unknown = [o.id for o in catalog.offers if o.id not in OFFER_IDS]
    if unknown:
        raise ValueError(f"offers without a response model in simulator.response: {unknown}")
    seeds = np.random.SeedSequence(seed).spawn(len(SEEDED_STAGES))
    rng = {name: np.random.default_rng(s) for name, s in zip(SEEDED_STAGES, seeds, strict=True)}
    buf = EventBuffer()
    with Progress(
        TextColumn("simulate {task.description:<11}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not progress,
        transient=False,
    ) as bar:
        task = bar.add_task("people", total=len(STAGES))

        def step(name: str) -> None:
            bar.update(task, advance=1, description=name)

        pop = make_people(rng["people"], customers)
        step("joiners")
        joiners = pick_joiners(rng["joiners"], pop, days)
        step("identities")
        identities, keys = make_identities(rng["identities"], pop)
        step("plans")
        simulate_plan_changes(rng["plans"], pop, days)
        step("lifecycle")
        simulate_lifecycle(rng["lifecycle"], pop, keys, days, buf)
        sign_up_events(rng["joiners"], pop, keys, joiners, days, buf)
        step("activity")
        baskets = simulate_activity(rng["activity"], pop, keys, days, buf)
        step("campaigns")
        sessions = {ch: buf.select(("session_start",), channel=ch) for ch in ("web", "app")}
        exposures = simulate_campaigns(
            rng["campaigns"], pop, keys, catalog, days, baskets, sessions, buf
        )
        step("comebacks")
        cp, ct = buf.select(CONTACT_TYPES, campaign=True)
        add_comebacks(rng["comebacks"], pop, keys, days, baskets, cp, ct, buf)
        step("assemble")
        person_ids = pop.people["person_id"].to_numpy()
        events = buf.frame(person_ids)
        people = _timestamps(
            pop.people,
            [
                "tenure_start",
                "contract_end",
                "churned_at",
                "disengaged_at",
                "renewed_at",
                "prior_contract_end",
            ],
        )
        identities = _timestamps(identities, ["created_at"])
        events = _timestamps(events, ["ts"])
        exposures = _exposures(exposures, person_ids)
        plans = _timestamps(pop.plans.frame(person_ids), ["valid_from"])
        step("done")
    meta = {
        "customers": customers,
        "days": days,
        "seed": seed,
        "start": WORLD_START.isoformat(),
        "end": pd.Timestamp(START_US + days * US_PER_DAY, unit="us", tz="UTC").isoformat(),
        "window_days": WINDOW_DAYS,
        "holdout_share": HOLDOUT_SHARE,
        "offers": catalog.ids,
    }
    return World(
        people[list(PEOPLE_COLUMNS)],
        identities[list(IDENTITY_COLUMNS)],
        events[list(EVENT_COLUMNS)],
        exposures[list(EXPOSURE_COLUMNS)],
        plans[list(PLAN_COLUMNS)],
        meta,
        keys,
    )


def _timestamps(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    df = df.copy()
    for c in cols:
        df[c] = to_timestamp(df[c].to_numpy()).set_axis(df.index)
    return df


_ARROW = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_SCHEMAS = {
    "people": PEOPLE_COLUMNS,
    "identities": IDENTITY_COLUMNS,
    "events": EVENT_COLUMNS,
    "exposures": EXPOSURE_COLUMNS,
    "plans": PLAN_COLUMNS,
}


def arrow_schema(table: str) -> pa.Schema:
    """The Parquet schema of a world table, from the column contracts in ``features.schema``."""
    return pa.schema(
        [
            pa.field(
                name,
                _ARROW[kind.split("|")[0]],
                nullable="null" in kind or kind.split("|")[0] == "string",
            )
            for name, kind in _SCHEMAS[table].items()
        ]
    )


def _exposures(ex: pd.DataFrame, person_ids: np.ndarray) -> pd.DataFrame:
    ex = ex.copy()
    ex.insert(0, "exposure_id", [f"X{i:08d}" for i in range(len(ex))])
    ex["true_person_id"] = person_ids[ex["person"].to_numpy().astype(np.int64)]
    ex["converted"] = ex["converted"].astype(bool)
    ex["open_basket"] = ex["open_basket"].astype(bool)
    return _timestamps(ex, ["ts", "converted_at"])


def write_world(world: World, out: str | Path) -> dict[str, Path]:
    """Write the tables as Parquet (microsecond UTC timestamps) plus ``world.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, df in world.tables().items():
        table = pa.Table.from_pandas(df, schema=arrow_schema(name), preserve_index=False)
        paths[name] = out / f"{name}.parquet"
        pq.write_table(table, paths[name], compression="zstd")
    (out / "world.json").write_text(json.dumps(world.meta, indent=2) + "\n")
    return paths


def load_world(world_dir: str | Path) -> World:
    """Read a written world back (the truth API and tests use this)."""
    d = Path(world_dir)
    if not (d / "world.json").exists():
        raise FileNotFoundError(
            f"{d} holds no simulated world (no world.json); run nextbest simulate"
        )
    tables = {t: pd.read_parquet(d / f"{t}.parquet") for t in TABLES if t != "plans"}
    return World(
        **tables,
        plans=read_plans(d, tables["people"]),
        meta=json.loads((d / "world.json").read_text()),
    )


def read_plans(world_dir: str | Path, people: pd.DataFrame) -> pd.DataFrame:
    """The plan history of a written world; a world written before it existed has none, so
    each person's one plan holds from sign-up."""
    path = Path(world_dir) / "plans.parquet"
    return pd.read_parquet(path) if path.exists() else static_plans(people)


def simulate_world(customers: int, days: int, seed: int, out: str | Path) -> dict[str, Any]:
    """Simulate and write a world; return a summary (rows per table, key rates, seconds) and
    its calibration against what users report (``simulator.calibration``)."""
    t0 = time.perf_counter()
    world = build_world(customers, days, seed, progress=True)
    t1 = time.perf_counter()
    write_world(world, out)
    seconds = time.perf_counter() - t0
    return {
        "out": str(Path(out).resolve()),
        **summarize(world),
        "seconds": round(seconds, 2),
        "seconds_simulate": round(t1 - t0, 2),
        "calibration": calibration(world),
    }


def summarize(world: World) -> dict[str, Any]:
    """Figures a reader checks first: sizes, churn and sign-ups in the window, comeback rate,
    campaign response."""
    ex = world.exposures
    arms = ex.groupby("arm")["converted"].mean().to_dict() if len(ex) else {}
    uplift = ex["true_p_treated"] - ex["true_p_untreated"]
    by_offer = uplift.groupby(ex["offer_id"]).mean().round(4).to_dict() if len(ex) else {}
    idn = world.identities
    shared = idn["email"].str.strip().str.lower().to_frame().join(idn["true_person_id"])
    shared = shared.dropna().groupby("email")["true_person_id"].nunique()
    return {
        "customers": world.meta["customers"],
        "days": world.meta["days"],
        "seed": world.meta["seed"],
        "rows": {t: len(df) for t, df in world.tables().items()},
        "churned_share": round(float(world.people["churned_at"].notna().mean()), 4),
        "joined_share": round(float((world.people["tenure_start"] >= WORLD_START).mean()), 4),
        "plan_changed_share": round(_plan_changed_share(world), 4),
        "basket_comeback": {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in comeback_rate(world.events, WINDOW_DAYS).items()
        },
        "campaigns": int(ex["campaign_id"].nunique()) if len(ex) else 0,
        "conversion_rate_by_arm": {k: round(float(v), 4) for k, v in arms.items()},
        "true_uplift_by_offer": by_offer,
        "negative_uplift_share": round(float((uplift < 0).mean()), 4) if len(ex) else 0.0,
        "identity": {
            "records_per_person": round(len(idn) / max(len(world.people), 1), 2),
            "emails_shared_by_people": int((shared > 1).sum()),
        },
    }


def _plan_changed_share(world: World) -> float:
    """Share of people whose plan (not only ARPU) changed during the simulated days."""
    plans = world.plans
    moved = plans["plan"] != plans.groupby("person_id")["plan"].shift().fillna(plans["plan"])
    return plans.loc[moved, "person_id"].nunique() / max(len(world.people), 1)


def load_world_tables(
    world_dir: str | Path,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """What the truth needs, without reading every event: people, identities, complaints and
    the plan history."""
    d = Path(world_dir)
    if not (d / "world.json").exists():
        raise FileNotFoundError(
            f"{d} holds no simulated world (no world.json); run nextbest simulate"
        )
    complaints = pq.read_table(
        d / "events.parquet",
        columns=["ts", "event_type", "true_person_id"],
        filters=[("event_type", "==", "complaint")],
    ).to_pandas()
    people = pd.read_parquet(d / "people.parquet")
    return (
        people,
        pd.read_parquet(d / "identities.parquet"),
        complaints,
        read_plans(d, people),
        json.loads((d / "world.json").read_text()),
    )
