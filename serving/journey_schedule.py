"""Scheduled entries: who falls due for a lifecycle, calendar, predictive or behavioural
trigger in (since, now], entered through the runner at their due time.

A sweep evaluates each trigger for the whole population in one vectorised pass of
``journeys.triggers.entries``, on the inputs the feature pipeline already keeps:

- lifecycle and calendar read the CRM profile ``features.build`` writes beside the snapshots
  (``snapshots/crm_profile.parquet``: sign-up, contract end and its history, renewal), as the
  CRM held it when the window opened (a renewal later in the window moves the contract end at
  the next sweep); without that file, the latest snapshot row's ``tenure_days`` and
  ``months_left_on_contract`` stand in, as ``due_scheduled`` derives them online;
- predictive triggers score the latest snapshot row of each customer (the rows Feast's
  ``customer_snapshots`` source reads and materialises: the churn model's features are all
  batch features) with the promoted churn model, in one batch. A customer is scored again only
  when a newer row appears ("evaluated when features refresh"); the score at the previous
  evaluation, kept in ``journey_schedule_scores``, makes a crossing a crossing;
- behavioural triggers read the event log (``features.ingest.read_event_log``), one event type,
  with merged customers under the id they go by now.

A customer whose churn event came at or before their due time is not entered. Entries go
through ``journey_runner.enter`` (one live instance, cool-down, holdout). How far each journey
has been swept is stored in ``journey_schedule`` (``journeys.schedule_state``), so a restart
continues where the last sweep ended; a sweep skips every (customer, due time) that already has
an instance, so sweeping one window twice enters nobody twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from features.aggregates import DAYS_PER_MONTH
from features.build import PROFILE_PATH
from features.ingest import read_event_log
from features.repo.data_sources import SNAPSHOT_PATH
from journeys.definition import (
    BehaviouralTrigger,
    CalendarTrigger,
    Journey,
    LifecycleTrigger,
    PredictiveTrigger,
)
from journeys.schedule_state import SWEEP_CLOCK, journey_schedule, journey_schedule_scores
from journeys.state import journey_instances
from journeys.triggers import SCHEDULED, UnsupportedTrigger, entries
from record.tables import utc
from serving.deps import Deps
from serving.journey_defs import active
from serving.journey_runner import enter

log = logging.getLogger("nextbest.journeys")
TICK = pd.Timedelta(microseconds=1)  # batch windows are [start, end): (since, now] is +1 us
EVENT_COLUMNS = ("ts", "customer_id", "channel", "event_type", "product_id")
CHUNK = 5000  # rows per query of existing instances / stored scores


class Sweep(BaseModel):
    """One sweep: the window each journey covered, how many entered, what could not be
    evaluated (the journey's window then stays open for the next sweep)."""

    now: datetime
    since: dict[str, datetime]
    entered: dict[str, int]
    skipped: dict[str, str]


def scheduled(deps: Deps) -> dict[str, Journey]:
    """The active journeys whose entry trigger is scheduled (not an intent)."""
    return {n: j for n, j in active(deps.settings).items() if isinstance(j.entry, SCHEDULED)}


def enter_scheduled(deps: Deps, since: datetime | None, now: datetime) -> int:
    """Enter everyone due in (since, now] (``since`` None: where each journey's last sweep
    ended); the number entered."""
    return sum(sweep(deps, now, since).entered.values())


def sweep(deps: Deps, now: datetime | None = None, since: datetime | None = None) -> Sweep:
    """One sweep of every scheduled journey up to ``now`` (default the clock), from ``since``
    or from where the journey's last sweep ended (a journey never swept: one sweep interval
    back). Each journey's stored end moves to ``now`` once its entries are in."""
    at = utc(now or deps.clock())
    journeys = scheduled(deps)
    engine = deps.ledger.engine
    stored = _swept(deps)
    default = at - timedelta(minutes=deps.settings.journey_schedule_minutes)
    inputs = _Inputs(deps, at)
    out = Sweep(now=at, since={}, entered={}, skipped={})
    for name, j in sorted(journeys.items()):
        start = utc(since) if since is not None else stored.get(name, default)
        out.since[name], out.entered[name] = start, 0
        if start >= at:
            continue
        try:
            due, scores = _due(j, inputs, start, at)
        except (UnsupportedTrigger, LookupError, ValueError, FileNotFoundError) as exc:
            out.skipped[name] = str(exc)
            log.warning("journey %s: scheduled entries not evaluated: %s", name, exc)
            continue
        due = _not_yet(deps, j, due, start, at)
        for row in due.itertuples(index=False):
            context = _context(j, row)
            try:
                out.entered[name] += enter(j, row.customer_id, row.ts, context, deps) is not None
            except Exception:  # noqa: BLE001 - one bad entry must not stop the others
                log.exception("entering %s for %s failed", name, row.customer_id)
        if scores is not None:
            _keep_scores(deps, name, scores)
        _advance(engine, name, at)
    return out


# --- inputs -----------------------------------------------------------------------------------
class _Inputs:
    """What the triggers read, loaded once per sweep and only when a journey needs it."""

    def __init__(self, deps: Deps, now: pd.Timestamp | datetime) -> None:
        self.deps, self.settings, self.now = deps, deps.settings, pd.Timestamp(now)
        self._canonical: dict[str, str] | None = None
        self._events: dict[str, pd.DataFrame] = {}
        self._churned: pd.Series | None = None
        self._latest: pd.DataFrame | None = None
        self._crm: pd.DataFrame | None = None

    def canonical(self, ids: pd.Series) -> pd.Series:
        """Customer ids under the id their person goes by now (identity merges)."""
        if self._canonical is None:
            graph = self.deps.graph
            self._canonical = graph.canonical_ids() if graph is not None else {}
        if not self._canonical:
            return ids
        return ids.map(self._canonical).fillna(ids)

    def events(self, event_type: str) -> pd.DataFrame:
        """The log's events of one type, customers under their current ids."""
        if event_type not in self._events:
            ev = read_event_log(self.settings, [event_type], EVENT_COLUMNS)
            ev = ev[ev["customer_id"].notna()]
            self._events[event_type] = ev.assign(customer_id=self.canonical(ev["customer_id"]))
        return self._events[event_type]

    def churned(self) -> pd.Series:
        """Each customer's last churn event."""
        if self._churned is None:
            ev = self.events("churn")
            self._churned = ev.groupby("customer_id")["ts"].max()
        return self._churned

    def latest(self) -> pd.DataFrame:
        """Each customer's latest snapshot row at or before now (what was materialised)."""
        if self._latest is None:
            path = self.settings.feature_dir / SNAPSHOT_PATH
            if not path.exists():
                raise FileNotFoundError(f"{path}: no snapshots (run `nextbest features build`)")
            cutoff = self.now.to_pydatetime()
            keys = pq.read_table(
                path,
                columns=["customer_id", "event_timestamp"],
                filters=[("event_timestamp", "<=", cutoff)],
            ).to_pandas()
            last = keys.groupby("customer_id", as_index=False)["event_timestamp"].max()
            stamps = pd.DatetimeIndex(last["event_timestamp"].unique())
            times = [t.to_pydatetime() for t in stamps]
            rows = pq.read_table(path, filters=[("event_timestamp", "in", times)]).to_pandas()
            rows = rows.merge(last, on=["customer_id", "event_timestamp"])
            rows = rows.assign(customer_id=self.canonical(rows["customer_id"]))
            rows = rows.sort_values("event_timestamp", kind="stable")  # merged: the newest row
            self._latest = rows.drop_duplicates("customer_id", keep="last").reset_index(drop=True)
        return self._latest

    def profiles(self, since: pd.Timestamp) -> pd.DataFrame:
        """customer_id, sign_up, contract_end (as held at ``since``), renewed_at (by now)."""
        path = self.settings.feature_dir / PROFILE_PATH
        if not path.exists():
            return self._derived()
        if self._crm is None:
            self._crm = pd.read_parquet(path)
        p = self._crm
        renewed = _ts(p, "renewed_at")
        end = _ts(p, "contract_end")
        if "prior_contract_end" in p.columns:
            before = renewed.notna() & (renewed > since)
            end = end.where(~before, _ts(p, "prior_contract_end"))
        return pd.DataFrame(
            {
                "customer_id": self.canonical(p["customer_id"]),
                "sign_up": _ts(p, "tenure_start"),
                "contract_end": end,
                "renewed_at": renewed.where(renewed <= self.now),
            }
        )

    def _derived(self) -> pd.DataFrame:
        """No CRM extract: sign-up and contract end from the latest snapshot row, as
        ``journeys.triggers.due_scheduled`` derives them (sign-up: that day's midnight UTC)."""
        rows = self.latest()
        as_of = pd.to_datetime(rows["event_timestamp"], utc=True)
        months = rows["months_left_on_contract"].astype(float)
        return pd.DataFrame(
            {
                "customer_id": rows["customer_id"].to_numpy(),
                "sign_up": (
                    as_of.dt.normalize() - pd.to_timedelta(rows["tenure_days"], unit="D")
                ).to_numpy(),
                "contract_end": (as_of + pd.to_timedelta(months * DAYS_PER_MONTH, unit="D"))
                .where(months > 0)
                .to_numpy(),
            }
        )


def _ts(frame: pd.DataFrame, col: str) -> pd.Series:
    if col not in frame.columns:
        return pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
    return pd.to_datetime(frame[col], utc=True)


# --- evaluation -------------------------------------------------------------------------------
def _due(
    j: Journey, inputs: _Inputs, since: datetime, now: datetime
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Entries due in (since, now] (customer_id, ts, channel, product_id[, score]), and for a
    predictive journey the scores to keep for the next evaluation."""
    t0, t1 = pd.Timestamp(since) + TICK, pd.Timestamp(now) + TICK
    trigger, scores = j.entry, None
    if isinstance(trigger, BehaviouralTrigger):
        found = entries(j, inputs.events(trigger.event), None, t0, t1)
    elif isinstance(trigger, LifecycleTrigger | CalendarTrigger):
        found = entries(j, None, inputs.profiles(pd.Timestamp(since)), t0, t1)
    elif isinstance(trigger, PredictiveTrigger):
        found, scores = _crossings(j, trigger, inputs, t0, pd.Timestamp(now))
    else:
        raise UnsupportedTrigger(f"entry.type: {trigger.type} is not scheduled")
    churned = found["customer_id"].map(inputs.churned())
    return found[~(churned <= found["ts"]).to_numpy()].reset_index(drop=True), scores


def _crossings(
    j: Journey, trigger: PredictiveTrigger, inputs: _Inputs, t0: pd.Timestamp, now: pd.Timestamp
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every customer whose snapshot row is newer than the one scored last time; a
    crossing enters at the row's time, or at the window's start if the row came in late."""
    churn = getattr(inputs.deps.models, "churn", None)
    if churn is None:
        why = inputs.deps.missing.get("models", "no churn model is promoted")
        raise LookupError(f"entry.score: {trigger.score} unavailable: {why}")
    rows = inputs.latest()
    prev = _stored_scores(inputs.deps, j.name)
    rows = rows.merge(prev, on="customer_id", how="left")
    fresh = rows[rows["as_of"].isna() | (rows["event_timestamp"] > rows["as_of"])]
    fresh = fresh.reset_index(drop=True)
    score = churn.predict_frame(fresh)["churn_risk"].to_numpy()
    at = pd.to_datetime(fresh["event_timestamp"], utc=True).clip(lower=t0, upper=now)
    before = fresh[fresh["as_of"].notna()]
    prior = pd.DataFrame(
        {"customer_id": before["customer_id"], "scored_at": t0 - TICK, trigger.score: before.score}
    )
    now_scored = pd.DataFrame(
        {"customer_id": fresh["customer_id"], "scored_at": at, trigger.score: score}
    )
    snaps = pd.concat([prior, now_scored], ignore_index=True) if len(prior) else now_scored
    found = entries(j, None, snaps, t0, now + TICK)
    found = found.merge(
        pd.DataFrame({"customer_id": fresh["customer_id"], "score": score}), on="customer_id"
    )
    keep = pd.DataFrame(
        {"customer_id": fresh["customer_id"], "as_of": fresh["event_timestamp"], "score": score}
    )
    return found, keep


def _not_yet(
    deps: Deps, j: Journey, due: pd.DataFrame, since: datetime, now: datetime
) -> pd.DataFrame:
    """Drop the entries that already have an instance (same journey, customer, entry time)."""
    if due.empty:
        return due
    c = journey_instances.c
    with deps.ledger.engine.connect() as conn:
        done = conn.execute(
            select(c.customer_id, c.entered_at).where(
                c.journey == j.name, c.entered_at > since, c.entered_at <= now
            )
        ).all()
    if not done:
        return due
    seen = pd.DataFrame(done, columns=["customer_id", "ts"])
    seen["ts"] = pd.to_datetime(seen["ts"], utc=True).astype(due["ts"].dtype)
    m = due.merge(seen.assign(_seen=True), on=["customer_id", "ts"], how="left")
    return due[m["_seen"].isna().to_numpy()].reset_index(drop=True)


def _context(j: Journey, row: Any) -> dict[str, Any]:
    """What the instance remembers of its entry (``product: entry`` reads product_id)."""
    out: dict[str, Any] = {
        "trigger": j.entry.type,
        "ts": pd.Timestamp(row.ts).isoformat(),
        "product_id": row.product_id if isinstance(row.product_id, str) else None,
        "channel": row.channel if isinstance(row.channel, str) else None,
        "basket": [],
    }
    if isinstance(j.entry, PredictiveTrigger):
        out[j.entry.score] = round(float(row.score), 6)
    return out


# --- state ------------------------------------------------------------------------------------
def _swept(deps: Deps) -> dict[str, datetime]:
    s = journey_schedule.c
    with deps.ledger.engine.connect() as conn:
        rows = conn.execute(select(s.journey, s.swept_until)).all()
    return {name: utc(t) for name, t in rows if name != SWEEP_CLOCK}


def _advance(engine: Any, name: str, now: datetime) -> None:
    """The journey's stored end moves forward to ``now`` (never back)."""
    s = journey_schedule.c
    with engine.begin() as conn:
        moved = conn.execute(
            update(journey_schedule)
            .where(s.journey == name, s.swept_until < now)
            .values(swept_until=now)
        ).rowcount
        if moved:
            return
        if conn.execute(select(s.journey).where(s.journey == name)).first() is None:
            conn.execute(insert(journey_schedule), [{"journey": name, "swept_until": now}])


def _stored_scores(deps: Deps, name: str) -> pd.DataFrame:
    c = journey_schedule_scores.c
    with deps.ledger.engine.connect() as conn:
        rows = conn.execute(select(c.customer_id, c.as_of, c.score).where(c.journey == name)).all()
    out = pd.DataFrame(rows, columns=["customer_id", "as_of", "score"])
    out["as_of"] = pd.to_datetime(out["as_of"], utc=True).astype("datetime64[us, UTC]")
    return out


def _keep_scores(deps: Deps, name: str, scores: pd.DataFrame) -> None:
    """Replace the stored scores of the customers just scored, in one transaction."""
    if scores.empty:
        return
    c = journey_schedule_scores.c
    ids = scores["customer_id"].tolist()
    rows = [
        {"journey": name, "customer_id": cid, "as_of": utc(pd.Timestamp(t).to_pydatetime()),
         "score": float(v)}
        for cid, t, v in zip(ids, scores["as_of"], scores["score"], strict=True)
    ]  # fmt: skip
    with deps.ledger.engine.begin() as conn:
        for i in range(0, len(ids), CHUNK):
            conn.execute(
                delete(journey_schedule_scores).where(
                    c.journey == name, c.customer_id.in_(ids[i : i + CHUNK])
                )
            )
        for i in range(0, len(rows), CHUNK):
            conn.execute(insert(journey_schedule_scores), rows[i : i + CHUNK])


# --- cadence ----------------------------------------------------------------------------------
def claim_sweep(deps: Deps, now: datetime) -> bool:
    """Whether this runner sweeps now: the last sweep started at least
    ``journey_schedule_minutes`` ago and no other runner claimed this one (a compare-and-set on
    the ``SWEEP_CLOCK`` row, so runners sharing a ledger sweep once between them)."""
    s = journey_schedule.c
    now = utc(now)
    every = timedelta(minutes=deps.settings.journey_schedule_minutes)
    with deps.ledger.engine.begin() as conn:
        last = conn.execute(
            select(s.swept_until).where(s.journey == SWEEP_CLOCK)
        ).scalar_one_or_none()
        if last is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(journey_schedule), [{"journey": SWEEP_CLOCK, "swept_until": now}]
                    )
            except IntegrityError:
                return False
            return True
        if utc(last) + every > now:
            return False
        moved = conn.execute(
            update(journey_schedule)
            .where(s.journey == SWEEP_CLOCK, s.swept_until == last)
            .values(swept_until=now)
        ).rowcount
    return moved == 1


def maybe_sweep(deps: Deps, now: datetime) -> int:
    """A sweep when one is due (``claim_sweep``); the number entered. A failed sweep is
    logged: the journeys' windows stay open, so the next sweep enters whom it missed."""
    if not scheduled(deps) or not claim_sweep(deps, now):
        return 0
    try:
        done = sweep(deps, now)
    except Exception:  # noqa: BLE001 - the runner's round goes on; the next sweep retries
        log.exception("scheduled journey sweep failed")
        return 0
    if any(done.entered.values()):
        log.info("scheduled entries: %s", done.entered)
    return sum(done.entered.values())
