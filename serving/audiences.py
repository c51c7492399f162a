"""Target-group membership in the ledger's database: rebuilt in batch, kept current as events
arrive, with each audience's sticky holdout.

``audience_members`` holds who is in each group now and their arm. The arm is drawn through
the ledger's sticky assignments (``record.assignment``) under the experiment
``audience:<name>``, so a person keeps it across rebuilds, identities and merges; the global
holdout is held out here too. Events reach ``on_event`` from the ingest path
(``serving.actions``): a purchase takes a customer out of a group that wants none, there and
then. "Now" for the windows of a batch rebuild is the event log's clock: its newest event,
unless that lies in the future (a simulated world is replayed on its own calendar).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    select,
)

from features.schema import CUSTOMER_ID_MAX
from nextbest.db import create_tables
from nextbest.settings import Settings
from record.assignment import assign_holdouts
from record.tables import insert_ignore
from serving.deps import Deps
from serving.policy import profile_fields
from serving.target_groups import (
    EventRule,
    TargetGroup,
    TargetGroupError,
    count_events,
    groups_dir,
    is_member,
    load_group_file,
    max_window,
    members_mask,
)

log = logging.getLogger("nextbest.audiences")
metadata = MetaData()
audience_members = Table(
    "audience_members",
    metadata,
    Column("audience", String(40), nullable=False),
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=False),
    Column("arm", String(16), nullable=False),  # treatment | holdout (never exported)
    Column("joined_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("audience", "customer_id"),
)
EVENT_COLUMNS = ["customer_id", "ts", "event_type", "product_id", "channel"]
READ_CHUNK = 1000
_CREATED: set[int] = set()


def ensure_tables(engine: Engine) -> None:
    """Create the audience tables once per engine (``serving.paid_media``'s too)."""
    if id(engine) not in _CREATED:
        create_tables(engine, metadata)
        _CREATED.add(id(engine))


def enter_journeys(deps: Deps, group: TargetGroup, customer_ids: list[str], at: datetime) -> int:
    """Enter the customers who just joined ``group`` into the active journeys whose entry is
    this group (each journey's rules apply: one live instance, cool-down, its own holdout).
    Both arms enter: a journey measures itself against its own holdout."""
    from journeys.definition import AudienceTrigger
    from serving.journey_defs import active
    from serving.journey_runner import enter

    journeys = [
        j
        for j in active(deps.settings).values()
        if isinstance(j.entry, AudienceTrigger) and j.entry.audience == group.name
    ]
    entered = 0
    for journey in journeys:
        for cid in customer_ids:
            entered += enter(journey, cid, at, {"audience": group.name}, deps) is not None
    return entered


def log_clock(deps: Deps, events: pd.DataFrame) -> datetime:
    """The rebuild's "now": the newest logged event, or the wall clock if that is earlier."""
    now = deps.clock()
    if events.empty:
        return now
    newest = pd.Timestamp(events["ts"].max()).to_pydatetime()
    return min(now, newest)


def profiles(deps: Deps, customer_ids: list[str], now: datetime | None = None) -> pd.DataFrame:
    """The customers' ``profile_v2`` online rows (derived rule fields added) and their churn
    risk (NaN without a churn model: a score condition then never holds)."""
    if deps.features is None:
        raise RuntimeError(f"feature store: {deps.missing.get('features', 'unavailable')}")
    rows: list[dict[str, Any]] = []
    for i in range(0, len(customer_ids), READ_CHUNK):
        part = customer_ids[i : i + READ_CHUNK]
        rows += [profile_fields(r) for r in deps.features.read_many(part, "profile_v2", now)]
    frame = pd.DataFrame(rows, index=pd.Index(customer_ids, name="customer_id"))
    frame = frame.drop(columns=["customer_id"], errors="ignore")
    churn = np.full(len(rows), np.nan)
    if deps.models is not None and getattr(deps.models, "churn", None) is not None and rows:
        churn = np.asarray(deps.models.churn_risks(rows), dtype="float64")
    frame["churn_risk"] = churn
    return frame


def evaluate(
    deps: Deps, group: TargetGroup, customer_ids: list[str], as_of: datetime | None = None
) -> tuple[pd.DataFrame, datetime]:
    """Everyone's inputs to the group's conditions and whether they hold (``member``)."""
    from features.ingest import read_event_log

    rules = group.event_rules()
    types = sorted({r.event for r in rules})
    events = read_event_log(deps.settings, types, EVENT_COLUMNS) if types else pd.DataFrame()
    as_of = as_of or log_clock(deps, events)
    frame = profiles(deps, customer_ids)
    if rules:
        counts = count_events(events, rules, as_of) if not events.empty else pd.DataFrame()
        frame = frame.join(counts, how="left")
        for i in range(len(rules)):
            col = f"event_{i}"
            frame[col] = frame[col].fillna(0).astype("int64") if col in frame else 0
    frame["member"] = members_mask(group, frame)
    return frame, as_of


def _arms(deps: Deps, group: TargetGroup, ids: list[str], now: datetime) -> dict[str, str]:
    """Each customer's sticky arm in the group's experiment (recorded in the ledger)."""
    visits = [(cid, {}, group.experiment, group.holdout_share) for cid in ids]
    drawn = assign_holdouts(visits, deps.assigner, deps.graph, deps.settings, now)
    deps.assigner.flush()
    return {
        cid: (a.arm if a is not None else "treatment") for cid, a in zip(ids, drawn, strict=True)
    }


def all_customers(deps: Deps) -> list[str]:
    """Every customer the identity graph holds (merged-away ids left out), in id order."""
    from features import graph_store as gs

    if deps.graph is None:
        raise RuntimeError(f"identity graph: {deps.missing.get('graph', 'unavailable')}")
    with deps.graph.engine.connect() as conn:
        ids = list(
            conn.execute(
                select(gs.customers.c.customer_id).order_by(gs.customers.c.customer_id)
            ).scalars()
        )
        gone = gs.merged_into(conn)
    return [c for c in ids if c not in gone]


def memberships(deps: Deps, customer_id: str) -> dict[str, str]:
    """The groups one customer is in now, and their arm there (the agent view)."""
    ensure_tables(deps.ledger.engine)
    t = audience_members
    with deps.ledger.engine.connect() as conn:
        rows = conn.execute(select(t.c.audience, t.c.arm).where(t.c.customer_id == customer_id))
        return {a: arm for a, arm in rows}


def current(deps: Deps, audience: str) -> pd.DataFrame:
    """The group's members now: customer_id, arm, joined_at."""
    ensure_tables(deps.ledger.engine)
    q = select(audience_members.c.customer_id, audience_members.c.arm, audience_members.c.joined_at)
    with deps.ledger.engine.connect() as conn:
        rows = conn.execute(q.where(audience_members.c.audience == audience)).all()
    return pd.DataFrame(rows, columns=["customer_id", "arm", "joined_at"])


def rebuild(deps: Deps, group: TargetGroup, as_of: datetime | None = None) -> dict[str, Any]:
    """Re-evaluate every customer and make the stored membership match: joiners in (with
    their sticky arm), leavers out. Returns counts and the clock used."""
    ids = all_customers(deps)
    frame, as_of = evaluate(deps, group, ids, as_of)
    now = deps.clock()
    want = set(frame.index[frame["member"]])
    had = current(deps, group.name)
    have = set(had["customer_id"])
    joining, leaving = sorted(want - have), sorted(have - want)
    arms = _arms(deps, group, joining, now) if joining else {}
    with deps.ledger.engine.begin() as conn:
        if leaving:
            conn.execute(
                delete(audience_members).where(
                    audience_members.c.audience == group.name,
                    audience_members.c.customer_id.in_(leaving),
                )
            )
        if joining:
            rows = [
                {"audience": group.name, "customer_id": c, "arm": arms[c], "joined_at": now}
                for c in joining
            ]
            conn.execute(insert_ignore(conn, audience_members), rows)
    members = current(deps, group.name)
    entered = enter_journeys(deps, group, joining, now) if joining else 0
    return {
        "audience": group.name,
        "as_of": as_of.isoformat(),
        "journey_entries": entered,
        "customers": len(ids),
        "members": len(members),
        "holdout": int((members["arm"] == "holdout").sum()),
        "joined": len(joining),
        "left": len(leaving),
    }


_ACTIVE: dict[str, tuple[tuple[tuple[str, int], ...], list[TargetGroup]]] = {}


def active_groups(settings: Settings) -> list[TargetGroup]:
    """The usable target groups of ``<home>/audiences``, read again only when a file there
    changes (every event asks); a bad file is logged and skipped, never fails an event."""
    folder = groups_dir(settings)
    files = sorted(folder.glob("*.y*ml")) if folder.is_dir() else []
    stamp = tuple((str(f), f.stat().st_mtime_ns) for f in files)
    cached = _ACTIVE.get(str(folder))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    groups = []
    for f in files:
        try:
            groups.append(load_group_file(f))
        except TargetGroupError as exc:
            log.warning("target group skipped: %s", exc)
    _ACTIVE[str(folder)] = (stamp, groups)
    return groups


def reacting(settings: Settings, event_type: str) -> list[TargetGroup]:
    """The groups whose membership an event of this type can change at once."""
    return [g for g in active_groups(settings) if g.reacts_to(event_type)]


def on_event(event: Any, customer_id: str, deps: Deps, groups: list[TargetGroup]) -> dict[str, Any]:
    """Re-check one customer against ``groups`` (:func:`reacting`: those whose event
    conditions this event type can change), at the event's time, and move them in or out.
    Returns the groups joined and left."""
    from features.ingest import read_customer_events

    if not groups or deps.features is None:
        return {}
    at = event.ts.astimezone(UTC)
    profile = profile_fields(deps.features.read(customer_id))
    scores: dict[str, float | None] = {"churn_risk": None}
    if deps.models is not None and getattr(deps.models, "churn", None) is not None:
        scores["churn_risk"] = float(deps.models.churn_risk(profile))
    types = sorted({r.event for g in groups for r in g.event_rules()})
    events = read_customer_events(deps.settings, customer_id, types, at - max_window(groups))
    joined, left = [], []
    for group in groups:
        rules = group.event_rules()
        counts = count_events(events, rules, at) if len(events) else pd.DataFrame()
        n = [int(counts[f"event_{i}"].get(customer_id, 0)) if len(counts) else 0
             for i in range(len(rules))]  # fmt: skip
        moved = _move(deps, group, customer_id, is_member(group, profile, scores, n), deps.clock())
        if moved == "joined":
            joined.append(group.name)
            enter_journeys(deps, group, [customer_id], at)
        elif moved == "left":
            left.append(group.name)
    return {"audiences_joined": joined, "audiences_left": left} if joined or left else {}


def _move(deps: Deps, group: TargetGroup, customer_id: str, inside: bool, now: datetime) -> str:
    """Insert or delete one membership row; which of joined / left / "" happened. The arm is
    drawn before the write (its own ledger write must not wait on this one)."""
    ensure_tables(deps.ledger.engine)
    t = audience_members
    key = (t.c.audience == group.name) & (t.c.customer_id == customer_id)
    with deps.ledger.engine.connect() as conn:
        there = conn.execute(select(t.c.arm).where(key)).first() is not None
    if there == inside:
        return ""
    with deps.ledger.engine.begin() as conn:
        if not inside:
            conn.execute(delete(t).where(key))
            return "left"
    arm = _arms(deps, group, [customer_id], now)[customer_id]
    row = {"audience": group.name, "customer_id": customer_id, "arm": arm, "joined_at": now}
    with deps.ledger.engine.begin() as conn:
        conn.execute(insert_ignore(conn, t), [row])
    return "joined"


def preview(deps: Deps, group: TargetGroup) -> dict[str, Any]:
    """Size and composition of the group as it would be rebuilt now (nothing is stored)."""
    ids = all_customers(deps)
    frame, as_of = evaluate(deps, group, ids)
    inside = frame.loc[frame["member"]]
    n = len(inside)

    def shares(col: str) -> dict[str, float]:
        if col not in inside or not n:
            return {}
        counts = inside[col].fillna("unknown").astype(str).value_counts()
        return {k: round(v / n, 4) for k, v in counts.items()}

    passing, seen = {}, 0
    for i, cond in enumerate(group.conditions):
        single = group.model_copy(update={"conditions": [cond]})
        sub = frame
        if isinstance(cond, EventRule):  # the single group's one event rule reads event_0
            sub, seen = frame.assign(event_0=frame[f"event_{seen}"]), seen + 1
        passing[f"conditions[{i}]"] = int(members_mask(single, sub).sum())
    return {
        "audience": group.name,
        "as_of": as_of.isoformat(),
        "customers": len(frame),
        "size": n,
        "share": round(n / len(frame), 4) if len(frame) else 0.0,
        "expected_holdout": round(n * group.holdout_share),
        "each_condition": passing,
        "rfm_segment": shares("rfm_segment"),
        "cluster": shares("cluster"),
        "plan": shares("plan"),
        "mean_churn_risk": None if not n else round(float(inside["churn_risk"].mean()), 4),
    }
