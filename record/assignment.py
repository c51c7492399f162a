"""Holdout assignment: a salted hash of the person's key draws the arm once; the ledger keeps it.

The hash makes a new person's arm the same in every worker and restart; the secret salt stops
anyone predicting or gaming their arm. The draw is then recorded (``Ledger.record_assignments``)
and never re-drawn: a person first seen by cookie, later by e-mail and then merged into an older
loyalty record keeps the arm of their first draw, the earliest recorded under any id they had.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel

from record.tables import StoredArm

log = logging.getLogger("nextbest.assignment")
Arm = Literal["treatment", "holdout"]
GLOBAL = "global"  # the global holdout is recorded as an experiment of this reserved name
FEW = 4  # batches with this many uncached people or fewer are assigned one by one


def bucket(customer_id: str, experiment: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, experiment, customer)."""
    digest = hashlib.sha256(f"{salt}\x1f{experiment}\x1f{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(customer_id: str, experiment: str, holdout_share: float, salt: str) -> Arm:
    """``holdout`` for a ``holdout_share`` slice of customers, independently per experiment."""
    if not 0.0 <= holdout_share < 1.0:
        raise ValueError(f"holdout_share must be in [0, 1), got {holdout_share}")
    if not customer_id:
        raise ValueError("customer_id must be a non-empty string")
    return "holdout" if bucket(customer_id, experiment, salt) < holdout_share else "treatment"


class Assignment(BaseModel):
    """The arm of one customer in one experiment, and which holdout put them there."""

    experiment: str
    arm: Arm
    holdout: Literal["global", "experiment"] | None = None


def assign_all(
    customer_id: str,
    experiment: str,
    *,
    global_share: float,
    experiment_share: float,
    salt: str,
) -> Assignment:
    """Global holdout first (kept out of every experiment), then the experiment's own."""
    if assign(customer_id, GLOBAL, global_share, salt) == "holdout":
        return Assignment(experiment=experiment, arm="holdout", holdout="global")
    if assign(customer_id, experiment, experiment_share, salt) == "holdout":
        return Assignment(experiment=experiment, arm="holdout", holdout="experiment")
    return Assignment(experiment=experiment, arm="treatment")


def effective_holdout_share(global_share: float, experiment_share: float) -> float:
    """The share of people an experiment holds out: the global holdout plus its own share of
    the rest, 1 - (1 - g)(1 - e) (0.05 and 0.10 hold out 14.5%, not 5%)."""
    return 1.0 - (1.0 - global_share) * (1.0 - experiment_share)


class HoldoutShares(BaseModel):
    """The configured shares and, per declared experiment, the share of people it holds out."""

    global_share: float
    experiment_share: float
    effective: dict[str, float]


def holdout_shares(settings: Any) -> HoldoutShares:
    """What /healthz and the report show, so nobody reads 5% where 14.5% are held out."""
    g, e = settings.global_holdout_share, settings.experiment_holdout_share
    share = round(effective_holdout_share(g, e), 6)
    return HoldoutShares(
        global_share=g, experiment_share=e, effective={x: share for x in declared(settings)}
    )


def declared(settings: Any) -> list[str]:
    """Experiments a decision may be in: the default one, then those channels may name."""
    return list(dict.fromkeys([settings.experiment, *settings.experiments]))


@dataclass(frozen=True)
class Unit:
    """Who a holdout is drawn for. ``key``: the id the decision knows the person by (a customer
    id, or the salted hash of their strongest identifier). ``person``: read only when the
    ledger must be asked, returns the key to draw on (the canonical id, following merges) and
    every other key the person was known by (merged ids, identifier hashes)."""

    key: str
    person: Callable[[], tuple[str, list[str]]]


class StickyAssigner:
    """First draw wins, per person and experiment, through every identity they arrive with.

    Answers are cached per (experiment, key) for ``ttl`` of decision time (the replay's clock
    is the world's, so its answers repeat), so a returning person costs no query on the
    decision path; the ttl bounds how long a worker may keep an arm that a merge (in another
    worker) has since replaced by an earlier one of the same person; expired answers leave the
    cache, and it holds at most ``max_cached`` (issue 15: kept until 100,000, they grew a
    worker by 2 MiB a minute under new customers). New rows are written in
    groups (``flush``: by the first decision ``flush_seconds`` after the last flush, or at
    ``flush_rows`` rows), not one commit per new person: a row lost in a crash is a fresh
    draw, the hash of the person's id, which their next decision draws and records again."""

    def __init__(
        self,
        ledger: Any,
        ttl: timedelta = timedelta(minutes=5),
        max_cached: int = 20_000,
        flush_seconds: float = 1.0,
        flush_rows: int = 256,
    ) -> None:
        self.ledger, self.ttl, self.max_cached = ledger, ttl, max_cached
        self.flush_seconds, self.flush_rows = flush_seconds, flush_rows
        self._cache: dict[tuple[str, str], tuple[Assignment, datetime]] = {}
        self._pending: dict[tuple[str, str], StoredArm] = {}
        self._flushed_at = time.monotonic()
        # recorded draws read ahead for a batch (``preload``): experiments, keys, rows
        self._recorded: tuple[set[str], set[str], dict[tuple[str, str], StoredArm]] | None = None

    def cached(self, experiment: str, key: str, now: datetime) -> bool:
        """Whether ``assign`` answers this (experiment, key) from memory now."""
        hit = self._cache.get((experiment, key))
        return hit is not None and hit[1] > now

    def preload(self, experiments: list[str] | None, keys: Sequence[str] = ()) -> None:
        """Read the recorded draws of these experiments under these keys in one go, for the
        ``assign`` calls of a batch that follow (None: forget them). A person whose keys
        were all read ahead costs no query; any other still asks the ledger."""
        read = getattr(self.ledger, "recorded_assignments", None)
        if experiments is None or read is None:
            self._recorded = None
            return
        keys = list(dict.fromkeys(keys))
        self._recorded = (set(experiments), set(keys), read(experiments, keys) if keys else {})

    def assign(
        self,
        experiment: str,
        unit: Unit,
        *,
        global_share: float,
        experiment_share: float,
        salt: str,
        now: datetime,
    ) -> Assignment:
        if self._pending and (
            len(self._pending) >= self.flush_rows
            or time.monotonic() - self._flushed_at >= self.flush_seconds
        ):
            self.flush()
        hit = self._cache.get((experiment, unit.key))
        if hit is not None and hit[1] > now:
            return hit[0]
        answer = self._first(experiment, unit, global_share, experiment_share, salt, now)
        self._cache.pop((experiment, unit.key), None)  # entries stay in order of expiry
        cache = self._cache
        while cache and (len(cache) >= self.max_cached or next(iter(cache.values()))[1] <= now):
            del cache[next(iter(cache))]  # the oldest: full, or its ttl has passed
        cache[(experiment, unit.key)] = (answer, now + self.ttl)
        return answer

    def flush(self) -> None:
        """Write the draws not recorded yet, in one transaction; on failure they wait."""
        self._flushed_at = time.monotonic()
        pending, self._pending = self._pending, {}
        if not pending:
            return
        rows = [
            {"experiment": e, "unit_key": k, "arm": v.arm, "assigned_at": v.assigned_at}
            for (e, k), v in pending.items()
        ]
        try:
            self.ledger.record_assignments(rows)
        except Exception:  # noqa: BLE001 - decisions go on; the next flush retries
            log.exception("holdout assignments not recorded yet (%d rows)", len(rows))
            self._pending = pending | self._pending
            return
        if self._recorded is not None:  # read ahead before these were written: add them
            for key, arm in pending.items():
                self._recorded[2].setdefault(key, arm)  # a key recorded already keeps its row

    def _first(
        self, experiment: str, unit: Unit, g: float, e: float, salt: str, now: datetime
    ) -> Assignment:
        """The person's earliest draws (recorded, or pending here); missing ones are drawn on
        the canonical key, and the canonical key gets a copy of inherited ones."""
        canonical, others = unit.person()
        keys = list(dict.fromkeys([canonical, unit.key, *others]))
        names = [GLOBAL, experiment]
        first = self._first_recorded(names, keys)
        for name, key in ((n, k) for n in names for k in keys):
            mine = self._pending.get((name, key))
            had = first.get(name)
            if mine and (had is None or (mine.assigned_at, key) < (had.assigned_at, had.unit_key)):
                first[name] = mine
        shares = {GLOBAL: g, experiment: e}
        for name in names:
            if name == experiment and first[GLOBAL].arm == "holdout":
                return Assignment(experiment=experiment, arm="holdout", holdout=GLOBAL)
            stored = first.get(name)
            if stored is None:  # a new person: drawn on their id, recorded
                arm = assign(canonical, name, shares[name], salt)
                stored = first[name] = StoredArm(canonical, arm, now)
                self._pending.setdefault((name, canonical), stored)
            elif stored.unit_key != canonical:  # inherited: the id they go by now gets a copy
                copy = StoredArm(canonical, stored.arm, stored.assigned_at)
                self._pending.setdefault((name, canonical), copy)
        if first[experiment].arm == "holdout":
            return Assignment(experiment=experiment, arm="holdout", holdout="experiment")
        return Assignment(experiment=experiment, arm="treatment")

    def _first_recorded(self, names: list[str], keys: list[str]) -> dict[str, StoredArm]:
        """``ledger.first_assignments``, from the rows read ahead when they cover the ask."""
        ahead = self._recorded
        if ahead is None or not (set(names) <= ahead[0] and set(keys) <= ahead[1]):
            return self.ledger.first_assignments(names, keys)
        first: dict[str, StoredArm] = {}
        for name in names:
            for key in keys:
                row = ahead[2].get((name, key))
                had = first.get(name)
                if row and (
                    had is None or (row.assigned_at, key) < (had.assigned_at, had.unit_key)
                ):
                    first[name] = row
        return first


class _ReadAhead:
    """The identity graph, with the person keys of a batch's customers already read."""

    def __init__(self, graph: Any, persons: dict[str, tuple[str, list[str]]]) -> None:
        self.graph, self.persons = graph, persons

    def person_keys(self, customer_id: str) -> tuple[str, list[str]]:
        found = self.persons.get(customer_id)
        return found if found is not None else self.graph.person_keys(customer_id)


def assign_holdouts(
    visits: list[tuple[str | None, dict[str, str], str, float | None]],
    assigner: StickyAssigner,
    graph: Any,
    settings: Any,
    now: datetime,
) -> list[Assignment | None]:
    """:func:`assign_holdout` of many visits (customer, identifiers, experiment, its share),
    in order: the person keys of the customers not cached and the recorded draws of everyone
    not cached are read in a few queries, not two per person."""
    misses = []
    for cid, ids, exp, _ in visits:
        key = cid if cid is not None else _person(None, ids, graph, settings)[0]
        if key and not assigner.cached(exp, key, now):
            misses.append((cid, ids, exp))
    if len(misses) <= FEW:  # a visit or a few: their prebuilt queries cost less (no compile)
        return [
            assign_holdout(cid, ids, exp, assigner, graph, settings, now, experiment_share=share)
            for cid, ids, exp, share in visits
        ]
    persons: dict[str, tuple[str, list[str]]] = {}
    read_many = getattr(graph, "person_keys_many", None)
    todo = [cid for cid, _, _ in misses if cid is not None]
    if todo and read_many is not None:
        try:
            persons = read_many(todo)
        except Exception:  # noqa: BLE001 - each person is then asked alone, as before
            persons = {}
    view = graph if graph is None else _ReadAhead(graph, persons)
    keys: list[str] = []
    for cid, ids, _ in misses:
        canonical, others = _person(cid, ids, view, settings)
        keys += [canonical, *([cid] if cid else []), *others]
    names = sorted({GLOBAL, *(exp for _, _, exp, _ in visits)})
    if misses:
        assigner.preload(names, [k for k in keys if k])
    try:
        return [
            assign_holdout(cid, ids, exp, assigner, view, settings, now, experiment_share=share)
            for cid, ids, exp, share in visits
        ]
    finally:
        assigner.preload(None)


def _person(
    cid: str | None, identifiers: dict[str, str], graph: Any, settings: Any
) -> tuple[str, list[str]]:
    """The key to draw on and every other key the visitor was known by: the canonical id
    (merges followed) with its merged ids and identifier hashes, and the request's own
    identifiers, normalised and hashed as the identity graph stores them."""
    from features.identity import Identifiers, identifier_hashes

    ids = Identifiers(**identifiers)
    hashes = list(identifier_hashes(ids, settings.identity_salt, settings.region).values())
    if cid is None:
        return (hashes[0], hashes[1:]) if hashes else ("", [])
    if graph is None:
        return cid, hashes
    try:
        canonical, others = graph.person_keys(cid)
    except Exception:  # noqa: BLE001 - the caller's id still draws the same arm every time
        return cid, hashes
    return canonical, [*others, *hashes]


def assign_holdout(
    cid: str | None,
    identifiers: dict[str, str],
    experiment: str,
    assigner: StickyAssigner,
    graph: Any,
    settings: Any,
    now: datetime,
    experiment_share: float | None = None,
) -> Assignment | None:
    """A decision's arm: the first ever drawn for the person (``cid``, the resolved customer,
    else the strongest of the request's ``identifiers``, normalised); None without any
    usable identifier. ``graph`` (the identity graph, or None) is read on a cache miss.
    ``experiment_share``: this experiment's own holdout share (a journey's
    ``rules.holdout_share``); None is ``settings.experiment_holdout_share``."""
    if cid is not None:
        key, person = cid, lambda: _person(cid, identifiers, graph, settings)
    else:
        key, others = _person(None, identifiers, graph, settings)
        if not key:
            return None
        person = lambda: (key, others)  # noqa: E731
    return assigner.assign(
        experiment,
        Unit(key, person),
        global_share=settings.global_holdout_share,
        experiment_share=(
            settings.experiment_holdout_share if experiment_share is None else experiment_share
        ),
        salt=settings.assignment_salt,
        now=now,
    )
