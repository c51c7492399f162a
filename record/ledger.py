"""The decision ledger: who was shown what, with which probability, and what happened after.

One set of SQLAlchemy Core tables (``record.tables``) serves SQLite (WAL, the default) and
PostgreSQL (by URL). Every write commits before it returns, so an acknowledged decision or
outcome survives a crash.
On an SQLite file, a decision's insert and contact-history read take the fast paths of
``record.ledger_sqlite`` (same rows and values, less overhead per decision).
Bandit training, off-policy evaluation and uplift reports all read from here.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    bindparam,
    case,
    delete,
    event,
    func,
    insert,
    literal_column,
    null,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.exc import DataError, IntegrityError

from nextbest.db import checkpoint, create_tables, is_sqlite_file
from record import applied as _applied  # noqa: F401 - its table is on the ledger's metadata
from record.ledger_pending import PG_LOCK, Pending, counted, customer_lock, stale_rows
from record.ledger_sqlite import Held, sqlite_histories, sqlite_history, sqlite_insert
from record.tables import (
    DecisionRow,
    DecisionStatus,
    History,
    OutcomeRow,
    Show,
    StoredArm,
    assignments,
    baskets,
    decisions,
    insert_ignore,
    metadata,
    outbox,
    outcomes,
    too_long,
    utc,
)

ERASED_PREFIX = "erased:"  # an erased outcome's idempotency key: this and a 64-hex hash
# Each kind of outcome has its own key space, so no caller's key can take another's place:
# a purchase event records its revenue under ``event:<event_id>`` and a caller's /outcome
# key is stored under ``outcome:`` (``caller_key``). Ledgers from before stored callers'
# keys as sent: ``legacy_keys`` finds those.
EVENT_KEYS = "event:"
CALLER_KEYS = "outcome:"
_LONG_CALLER_KEYS = "outcome#"  # and a hash, for a key too long to fit with its prefix
KEY_LENGTH: int = outcomes.c.idempotency_key.type.length
# What an erased person's decisions keep of the columns that could name or describe them; a
# column added to ``decisions`` that could do so belongs here too (``Ledger.erase``).
ERASED_DECISION: dict[str, Any] = {"customer_id": None, "context": {}, "scores": {}, "reason": ""}
# A decision that showed something: what contact caps, offer caps and suppression count.
# A message cancelled before it was sent showed nothing (NULL status: an older row, shown).
SHOWN = (
    decisions.c.offer_id.is_not(None),
    decisions.c.status.is_distinct_from(literal_column("'cancelled'")),
)

# Built once: compiling a statement per decision cost more than running it.
_MANY = type_coerce(  # only rows that showed more than one offer need their slots parsed
    case((func.json_array_length(decisions.c.slots) > literal_column("1"), decisions.c.slots)),
    JSON,
)
_HISTORY = union_all(
    select(decisions.c.channel, decisions.c.offer_id, decisions.c.ts, _MANY).where(
        decisions.c.customer_id == bindparam("cid"), decisions.c.ts >= bindparam("since"), *SHOWN
    ),
    select(null(), null(), func.max(outcomes.c.ts), null()).where(
        outcomes.c.customer_id == bindparam("cid")
    ),
)
# The same for many customers at once (``Ledger.contact_histories``), each row with its customer.
_HISTORIES = union_all(
    select(
        decisions.c.customer_id, decisions.c.channel, decisions.c.offer_id, decisions.c.ts, _MANY
    ).where(
        decisions.c.customer_id.in_(bindparam("cids", expanding=True)),
        decisions.c.ts >= bindparam("since"),
        *SHOWN,
    ),
    select(outcomes.c.customer_id, null(), null(), func.max(outcomes.c.ts), null())
    .where(outcomes.c.customer_id.in_(bindparam("cids", expanding=True)))
    .group_by(outcomes.c.customer_id),
)
HISTORY_CHUNK = 500  # customers per contact-history query (two IN lists of bound ids)
FEW = 4  # this many customers or fewer: one prebuilt query each (a visit's own path)
# How many of those each customer has now: a planned decision's commit compares it with the
# count its plan saw (``PlannedOn``), inside the transaction that writes it.
# The same for many customers at once, grouped (``record.ledger_pending.counted``).
_SEEN_MANY = (
    select(decisions.c.customer_id, func.count())
    .where(
        decisions.c.customer_id.in_(bindparam("cids", expanding=True)),
        decisions.c.ts >= bindparam("since"),
        *SHOWN,
    )
    .group_by(decisions.c.customer_id)
)

# Built once like _HISTORY: is this key, hashed as an erasure leaves it, already recorded?
_ERASED_KEY = select(outcomes.c.outcome_id).where(outcomes.c.idempotency_key == bindparam("key"))
_STORED = select(outcomes).where(outcomes.c.idempotency_key == bindparam("key"))


def event_key(event_id: str) -> str:
    """The key a purchase event records its revenue outcome under."""
    return EVENT_KEYS + event_id


def caller_key(key: str) -> str:
    """A caller's /outcome key as stored: in its own key space, never equal to an event's
    key or an erased one's; hashed when the prefix would not fit the column."""
    stored = CALLER_KEYS + key
    if len(stored) <= KEY_LENGTH:
        return stored
    return _LONG_CALLER_KEYS + hashlib.sha256(key.encode()).hexdigest()


def legacy_keys(key: str) -> list[str]:
    """The caller's key as a ledger from before key spaces stored it (as sent), unless that
    spelling belongs to another kind's space: a retry across the upgrade still counts once."""
    reserved = (EVENT_KEYS, CALLER_KEYS, _LONG_CALLER_KEYS, ERASED_PREFIX)
    return [] if key.startswith(reserved) else [key]


# Prebuilt with a fixed number of slots (unused ones bind ""), so the compiled statement is
# cached: it runs once per person and worker on /decide, and an expanding IN recompiles.
ASSIGNMENT_SLOTS = 8
_ASSIGNMENTS = select(
    assignments.c.experiment, assignments.c.unit_key, assignments.c.arm, assignments.c.assigned_at
).where(
    assignments.c.experiment.in_([bindparam(f"e{i}") for i in range(ASSIGNMENT_SLOTS)]),
    assignments.c.unit_key.in_([bindparam(f"k{i}") for i in range(ASSIGNMENT_SLOTS)]),
)


class LedgerError(Exception):
    """A ledger write that did not happen for a reason worth telling the caller (the
    database's answer, not a bug): the service answers it with a 503 naming the ledger."""


class RowRejected(LedgerError):
    """The database refused this row alone (a value longer than its column, a duplicate key)
    and wrote the other rows of its group. ``field``: the column whose value does not fit,
    when that is why (the row's input, then); else None."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(f"{field or 'ledger'}: {reason}")
        self.field, self.reason = field, reason


# What the database says of one row's values rather than of the transaction or the connection.
ROW_ERRORS = (IntegrityError, DataError)


def rejected(row: DecisionRow, exc: Exception) -> RowRejected:
    """Why the database refused ``row`` alone: the column it overflows, else its error."""
    long = too_long(decisions, row.model_dump())
    if long is not None:
        return RowRejected(f"longer than {long[1]} characters", field=long[0])
    orig = getattr(exc, "orig", exc)
    return RowRejected(f"{type(orig).__name__}: {str(orig).splitlines()[0][:200]}")


def _slots(prefix: str, values: list[str]) -> dict[str, str]:
    return {f"{prefix}{i}": values[i] if i < len(values) else "" for i in range(ASSIGNMENT_SLOTS)}


class Ledger:
    """Reads and writes of the ledger tables over one engine (SQLite or PostgreSQL)."""

    def __init__(
        self,
        engine: Engine,
        create: bool = True,
        synchronous: str | None = None,
        key_salt: str = "",
    ) -> None:
        """``synchronous`` overrides SQLite's setting for this engine's connections (see
        ``Settings.ledger_synchronous``); PostgreSQL ignores it. ``key_salt`` keys the hash
        an erased outcome keeps of its idempotency key (``Settings.identity_salt``)."""
        self.engine = engine
        self._key_salt = key_salt.encode()
        if synchronous is not None and engine.dialect.name == "sqlite":
            if synchronous not in ("FULL", "NORMAL"):
                raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")

            @event.listens_for(engine, "connect")
            def _sync(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.execute(f"PRAGMA synchronous={synchronous}")

            engine.dispose()  # pooled connections pick the setting up on reconnect
        if create:
            create_tables(engine, metadata)
        # SQLite fast paths (record.ledger_sqlite) for a file: a memory database lives in
        # one pooled connection, which Held would detach
        fast = is_sqlite_file(engine)
        self._held = held = Held()
        self._history = (
            sqlite_history(engine, held, _HISTORY, decisions.c.ts.type) if fast else None
        )
        self._histories = (
            sqlite_histories(engine, held, _HISTORIES, decisions.c.ts.type) if fast else None
        )
        self._insert = sqlite_insert(engine, held, decisions, _SEEN_MANY) if fast else None
        # decisions planned in this process and not committed yet count against caps
        self.pending = Pending()

    def record_decision(self, row: DecisionRow) -> bool:
        """Insert and commit before the caller acknowledges the decision; False when its plan
        is stale (see ``record_decisions``) and nothing was written."""
        return not self.record_decisions([row])

    def record_decisions(self, rows: list[DecisionRow]) -> list[DecisionRow]:
        """Several decisions in one transaction: one commit (one fsync) for a group.

        A row with ``planned_on`` is written only if its customer's shows still number what
        its plan counted, checked inside the transaction after taking the customer's write
        lock (SQLite's one writer; PostgreSQL's advisory lock per customer); otherwise
        another writer showed them something since, and the row is returned, unwritten, to be
        planned again: caps hold across workers, and a kept plan's probabilities are exact."""
        check = any(r.planned_on is not None for r in rows)
        if self._insert is not None:
            pick = (
                (lambda many: stale_rows(rows, counted(rows, many), self.pending.failed))
                if check
                else None
            )
            return self._insert(rows, pick)
        with self.engine.begin() as conn:
            return self.record_decisions_in(conn, rows)

    def record_decisions_isolated(
        self, rows: list[DecisionRow]
    ) -> tuple[list[DecisionRow], list[tuple[DecisionRow, RowRejected]]]:
        """``record_decisions`` for a group of several callers' rows, where one row the
        database refuses (``ROW_ERRORS``) must not fail the others: the group is split in
        halves, each committed on its own (in order), until every refused row is alone. The
        stale rows and the refused ones (with why) are returned; the rest is committed. A
        refused row is counted as never written at once, so the plans after it that counted it
        stand. Costs nothing while no row is refused; k refused rows cost ~2k log2(n) commits.
        Any other error (the disk, the connection) fails the whole group, as before."""
        try:
            return self.record_decisions(rows), []
        except ROW_ERRORS as exc:
            if len(rows) == 1:
                self.pending.release(rows, failed=rows)
                return [], [(rows[0], rejected(rows[0], exc))]
        half = len(rows) // 2
        stale, refused = self.record_decisions_isolated(rows[:half])
        more_stale, more_refused = self.record_decisions_isolated(rows[half:])
        return stale + more_stale, refused + more_refused

    def record_decisions_in(self, conn: Connection, rows: list[DecisionRow]) -> list[DecisionRow]:
        """``record_decisions`` inside the caller's transaction (a journey step writes its
        decision, its outbox message and its state change together): the same cap check on
        ``conn`` (on SQLite the caller holds the write lock: ``BEGIN IMMEDIATE``); nothing is
        committed here. The stale rows are returned, unwritten."""
        stale: list[DecisionRow] = []
        if any(r.planned_on is not None for r in rows):
            if conn.dialect.name == "postgresql":
                keys = sorted({customer_lock(r.customer_id) for r in rows if r.customer_id})
                conn.execute(PG_LOCK, {"keys": keys})

            def count_many(cids: list[str], since: datetime) -> dict[str, int]:
                found = conn.execute(_SEEN_MANY, {"cids": cids, "since": since})
                return {cid: n for cid, n in found}

            stale = stale_rows(rows, counted(rows, count_many), self.pending.failed)
        fresh = [r.model_dump() for r in rows if not any(r is x for x in stale)]
        if fresh:
            conn.execute(insert(decisions), fresh)
        return stale

    def record_outcome(self, row: OutcomeRow) -> bool:
        """Insert once per idempotency key; False when the key was already recorded."""
        return self.record_outcome_once(row)[0]

    def record_outcome_once(
        self, row: OutcomeRow, older_keys: list[str] | tuple[str, ...] = ()
    ) -> tuple[bool, OutcomeRow | None]:
        """Insert once per idempotency key: (True, None) when this call recorded it, else
        (False, the row stored under the key), so the caller can tell a retry from a key
        reused for something else. None too when the row was erased (it says nothing
        about the person any more). ``older_keys``: the same key as an older ledger spelt
        it (``legacy_keys``), looked up too."""
        keys = [row.idempotency_key, *older_keys]
        try:
            with self.engine.begin() as conn:
                for key in keys:
                    if conn.execute(_ERASED_KEY, {"key": self.erased_key(key)}).first():
                        return False, None  # recorded once already, for a person since erased
                for key in older_keys:
                    if old := conn.execute(_STORED, {"key": key}).mappings().first():
                        return False, OutcomeRow(**old)
                conn.execute(insert(outcomes), [row.model_dump()])
        except IntegrityError:
            return False, self.stored_outcome(row.idempotency_key)
        return True, None

    def stored_outcome(self, key: str) -> OutcomeRow | None:
        """The outcome stored under this idempotency key (as stored), if any."""
        with self.engine.connect() as conn:
            row = conn.execute(_STORED, {"key": key}).mappings().first()
        return OutcomeRow(**row) if row is not None else None

    def first_assignments(self, experiments: list[str], keys: list[str]) -> dict[str, StoredArm]:
        """Per experiment, the earliest recorded draw under any of ``keys`` (ties: the smaller
        key), so every id a person was known by yields the same answer."""
        first: dict[str, StoredArm] = {}
        with self.engine.connect() as conn:
            for e in range(0, len(experiments), ASSIGNMENT_SLOTS):
                for k in range(0, len(keys), ASSIGNMENT_SLOTS):
                    params = _slots("e", experiments[e : e + ASSIGNMENT_SLOTS])
                    params |= _slots("k", keys[k : k + ASSIGNMENT_SLOTS])
                    for name, key, arm, at in conn.execute(_ASSIGNMENTS, params):
                        at, had = utc(at), first.get(name)
                        if had is None or (at, key) < (had.assigned_at, had.unit_key):
                            first[name] = StoredArm(key, arm, at)
        return first

    def recorded_assignments(
        self, experiments: list[str], keys: list[str]
    ) -> dict[tuple[str, str], StoredArm]:
        """Every recorded draw of these experiments under these keys, by (experiment, key),
        in chunked queries: what ``first_assignments`` picks from, for many people at once."""
        found: dict[tuple[str, str], StoredArm] = {}
        a = assignments.c
        query = select(a.experiment, a.unit_key, a.arm, a.assigned_at).where(
            a.experiment.in_(bindparam("names", expanding=True)),
            a.unit_key.in_(bindparam("keys", expanding=True)),
        )
        unique = list(dict.fromkeys(keys))
        with self.engine.connect() as conn:
            for i in range(0, len(unique), HISTORY_CHUNK):
                params = {"names": list(experiments), "keys": unique[i : i + HISTORY_CHUNK]}
                for name, key, arm, at in conn.execute(query, params):
                    found[(name, key)] = StoredArm(key, arm, utc(at))
        return found

    def record_assignments(self, rows: list[dict[str, Any]]) -> None:
        """Insert draws (experiment, unit_key, arm, assigned_at); a key already recorded keeps
        its row: the first write wins, whichever worker made it."""
        if not rows:
            return
        with self.engine.begin() as conn:
            conn.execute(insert_ignore(conn, assignments), rows)

    def erase_assignments(self, keys: list[str]) -> int:
        """Forget a person's holdout draws: ``keys`` are every id they had (the customer id,
        and ``IdentityGraph.person_keys``, read before the graph forgets them); rows deleted."""
        with self.engine.begin() as conn:
            return conn.execute(
                delete(assignments).where(assignments.c.unit_key.in_(keys))
            ).rowcount

    def decision(self, decision_id: str) -> DecisionRow | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(decisions).where(decisions.c.decision_id == decision_id))
            row = r.mappings().first()
        return DecisionRow(**row) if row else None

    def contact_history(self, customer_id: str, since: datetime) -> History:
        """Every decision that showed this customer something since ``since`` (each with all
        its slots), those this process planned and has not committed yet included, and their
        last response: everything the contact caps and suppression rules need, in one round
        trip (the last response rides along as a row with a null channel)."""
        if self._history is not None:
            rows = self._history(customer_id, since)
        else:
            with self.engine.connect() as conn:
                rows = conn.execute(_HISTORY, {"cid": customer_id, "since": since}).all()
        shows = [
            Show(ch, tuple(s["offer_id"] for s in many) if many else (o,), utc(t))
            for ch, o, t, many in rows
            if ch is not None
        ]
        last = next((t for ch, _, t, _ in rows if ch is None and t is not None), None)
        planned = [r for r in self.pending.of(customer_id) if r.ts >= since] if self.pending else []
        shows += [Show(r.channel, r.shown(), r.ts, r.decision_id) for r in planned]
        return History(shows, utc(last) if last else None)

    def contact_histories(self, customer_ids: list[str], since: datetime) -> dict[str, History]:
        """``contact_history`` of many customers in one query per ``HISTORY_CHUNK`` of them,
        with the same pending rows (planned by this process, not committed yet) counted."""
        ids = list(dict.fromkeys(customer_ids))
        if len(ids) <= FEW:  # a prebuilt statement (the SQLite fast path) beats an IN list
            return {c: self.contact_history(c, since) for c in ids}
        shows: dict[str, list[Show]] = {c: [] for c in ids}
        last: dict[str, datetime] = {}
        for i in range(0, len(ids), HISTORY_CHUNK):
            part = ids[i : i + HISTORY_CHUNK]
            if self._histories is not None:
                rows = self._histories(part, since)
            else:
                with self.engine.connect() as conn:
                    rows = conn.execute(_HISTORIES, {"cids": part, "since": since}).all()
            for cid, ch, o, t, many in rows:
                if ch is not None:
                    offers = tuple(s["offer_id"] for s in many) if many else (o,)
                    shows[cid].append(Show(ch, offers, utc(t)))
                elif t is not None:
                    last[cid] = utc(t)
        if self.pending:
            for cid in ids:
                planned = [r for r in self.pending.of(cid) if r.ts >= since]
                shows[cid] += [Show(r.channel, r.shown(), r.ts, r.decision_id) for r in planned]
        return {c: History(shows[c], last.get(c)) for c in ids}

    def logs(self, since: datetime | None = None, channel: str | None = None) -> pd.DataFrame:
        """Decisions in time order: bandit training, OPE and reports. What each earned is
        ``record.attribution.credit``'s to say (a sum of the outcomes linked to a decision
        would count an order twice and miss the purchases that name no decision)."""
        q = select(decisions)
        if since is not None:
            q = q.where(decisions.c.ts >= since)
        if channel is not None:
            q = q.where(decisions.c.channel == channel)
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(q.order_by(decisions.c.ts)).mappings().all())

    def experiment_exposures(self, experiment: str) -> pd.DataFrame:
        """Per decision of one experiment: arm, offer, customer (the rows of :meth:`logs`)."""
        df = self.logs()
        if df.empty:
            return df
        return df[df["experiment"] == experiment].reset_index(drop=True)

    def outcomes_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(select(outcomes)).mappings().all())

    def erase(self, customer_id: str) -> dict[str, int]:
        """Remove a person's personal data; decisions and outcomes stay, anonymised, so
        experiment counts remain valid while nothing links them to the person: no customer
        id, context (pages, basket), scores (the features read) or reason text; outcomes
        keep a hash of their idempotency key and order id (``erased_key``), so a retried
        report of one still counts once. Rows of every other table naming the customer
        (outbox and its payloads, baskets, tables added later) are deleted, or anonymised where
        the id may be null. On SQLite the engine's ``secure_delete`` zeroes the freed bytes and
        the WAL is checkpointed, so the old pages leave the files too."""
        counts: dict[str, int] = {}
        with self.engine.begin() as conn:
            counts["decisions"] = conn.execute(
                update(decisions)
                .where(decisions.c.customer_id == customer_id)
                .values(**ERASED_DECISION)
            ).rowcount
            keys = conn.execute(
                select(
                    outcomes.c.outcome_id, outcomes.c.idempotency_key, outcomes.c.order_id
                ).where(outcomes.c.customer_id == customer_id)
            ).all()
            if keys:  # an order id is the shop's name for the person's order: hashed alike
                conn.execute(
                    update(outcomes)
                    .where(outcomes.c.outcome_id == bindparam("oid"))
                    .values(
                        customer_id=None,
                        idempotency_key=bindparam("key"),
                        order_id=bindparam("order"),
                    ),
                    [
                        {"oid": i, "key": self.erased_key(k), "order": o and self.erased_key(o)}
                        for i, k, o in keys
                    ],
                )
            counts["outcomes"] = len(keys)
            for table in metadata.sorted_tables:
                col = table.c.get("customer_id")
                if table in (decisions, outcomes) or col is None:
                    continue
                q = update(table).values(customer_id=None) if col.nullable else delete(table)
                counts[table.name] = conn.execute(q.where(col == customer_id)).rowcount
        checkpoint(self.engine)
        return counts

    def erased_key(self, idempotency_key: str) -> str:
        """What an erased outcome keeps of its idempotency key: a salted hash (the key may
        spell an order number or an e-mail), still unique, so a retry is still recognised."""
        digest = hmac.new(self._key_salt, idempotency_key.encode(), hashlib.sha256)
        return ERASED_PREFIX + digest.hexdigest()

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (decisions, outcomes, outbox, baskets)
            }


def mark_status(conn: Connection, ids: list[str], status: DecisionStatus) -> int:
    """Mark decisions' delivery in the caller's transaction (an outbox change and its
    decisions' go together); the number of rows marked."""
    if not ids:
        return 0
    q = update(decisions).where(decisions.c.decision_id.in_(ids)).values(status=status)
    return conn.execute(q).rowcount
