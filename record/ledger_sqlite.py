"""The decision ledger's SQLite fast paths: a decision's insert and its contact-history read.

Once or twice per decision, SQLAlchemy Core's Connection, execution context and result objects
cost more than the statements themselves. These run SQLAlchemy's own SQL text and type
conversions (datetimes, JSON, booleans) on a DBAPI connection of the engine, so rows and values
are byte-identical to ``conn.execute``'s, and errors are raised as SQLAlchemy's.
``record.ledger.Ledger`` uses them for an SQLite file and the Core path everywhere else.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, Table, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import CompoundSelect
from sqlalchemy.types import TypeEngine


class Held(threading.local):
    """This thread's connection for the fast paths, kept: a pool checkout and checkin per
    statement cost more than the statement (~6 us). Made by the engine's pool (its connect
    events, the pragmas, apply) and detached from it; replaced after ``engine.dispose()``, as
    pooled ones are (``WalCheckpointer`` sets a pragma that way). Between calls it holds no
    transaction: reads open none, writes commit, and a failed statement drops it."""

    pool: Any = None
    conn: Any = None

    def get(self, engine: Engine) -> Any:
        if self.pool is not engine.pool:
            self.drop()
            fairy = engine.raw_connection()
            fairy.detach()
            self.conn, self.pool = fairy.dbapi_connection, engine.pool
        return self.conn

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()  # rolls back whatever a failed statement left open
        self.conn = self.pool = None


@contextmanager
def _cursor(engine: Engine, held: Held, sql: str, params: Any) -> Iterator[Any]:
    """A cursor on the held connection; any failure drops the connection (rolling back what
    it left open) and a driver error is raised as SQLAlchemy's."""
    conn = held.get(engine)
    try:
        cur = conn.cursor()
        try:
            yield cur
        finally:
            cur.close()
    except engine.dialect.loaded_dbapi.Error as exc:
        held.drop()
        raise DBAPIError.instance(sql, params, exc, engine.dialect.loaded_dbapi.Error) from exc
    except BaseException:
        held.drop()
        raise


def _positional(stmt: Any, engine: Engine, names: set[str]) -> tuple[str, list[str]] | None:
    """``stmt``'s SQL and its bind names in order; None when they are not ``names``."""
    compiled = stmt.compile(dialect=engine.dialect)
    order = list(compiled.positiontup or ())
    return (str(compiled), order) if set(order) == names else None


def sqlite_history(
    engine: Engine, held: Held, history: CompoundSelect, ts_type: TypeEngine[Any]
) -> Callable[[str, datetime], list[tuple[Any, ...]]] | None:
    """``history`` (the ledger's contact-history query: binds ``cid`` and ``since``, rows of
    channel, offer, a ``ts_type`` time and JSON slots or NULL) for one customer (measured in
    the decision pipeline: ~100 -> ~35 us). None when its SQL is not the positional kind
    expected."""
    dialect = engine.dialect
    positional = _positional(history, engine, {"cid", "since"})
    if positional is None:  # not the positional SQL expected: the general path
        return None
    sql, order = positional
    impl = ts_type.dialect_impl(dialect)
    to_db = impl.bind_processor(dialect) or (lambda v: v)
    from_db = impl.result_processor(dialect, None) or (lambda v: v)

    def parse(t: Any) -> Any:
        # SQLAlchemy's own format, "YYYY-MM-DD HH:MM:SS.ffffff": the C parser, same datetime
        if type(t) is str and len(t) == 26 and t[10] == " ":
            return datetime.fromisoformat(t)
        return from_db(t)

    def run(customer_id: str, since: datetime) -> list[tuple[Any, ...]]:
        values = {"cid": customer_id, "since": to_db(since)}
        params = [values[name] for name in order]
        with _cursor(engine, held, sql, params) as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        return [(ch, o, parse(t), json.loads(s) if s else None) for ch, o, t, s in rows]

    return run


def _in_list(
    stmt: Any, engine: Engine, listed: str, names: set[str]
) -> Callable[[list[Any], dict[str, Any]], tuple[str, list[Any]]] | None:
    """``stmt``'s SQL and positional parameters for an IN list (``listed``, expanding, bound
    wherever it occurs) and the other ``names``, each list size's SQL made once; None when
    its SQL is not of that kind."""
    compiled = stmt.compile(dialect=engine.dialect)
    sql, mark = str(compiled), f"(__[POSTCOMPILE_{listed}])"
    order = list(compiled.positiontup or ())
    if set(order) != names | {listed} or sql.count(mark) != order.count(listed):
        return None
    made: dict[int, str] = {}

    def of(values: list[Any], params: dict[str, Any]) -> tuple[str, list[Any]]:
        n = len(values)
        got = made.get(n)
        if got is None:
            got = made[n] = sql.replace(mark, f"({','.join('?' * n)})")
        bound: list[Any] = []
        for name in order:
            if name == listed:
                bound += values
            else:
                bound.append(params[name])
        return got, bound

    return of


def sqlite_histories(
    engine: Engine, held: Held, histories: CompoundSelect, ts_type: TypeEngine[Any]
) -> Callable[[list[str], datetime], list[tuple[Any, ...]]] | None:
    """``histories`` (the ledger's contact-history query for many customers: binds the
    expanding ``cids`` and ``since``; rows of customer, channel, offer, a ``ts_type`` time and
    JSON slots or NULL) as :func:`sqlite_history` runs one customer's: the same values without
    Core's result objects (measured on 2,000 customers: ~120 -> ~50 us each). None when its
    SQL is not of the kind expected."""
    dialect = engine.dialect
    query = _in_list(histories, engine, "cids", {"since"})
    if query is None:
        return None
    impl = ts_type.dialect_impl(dialect)
    to_db = impl.bind_processor(dialect) or (lambda v: v)
    from_db = impl.result_processor(dialect, None) or (lambda v: v)
    fromiso, loads = datetime.fromisoformat, json.loads

    def run(customer_ids: list[str], since: datetime) -> list[tuple[Any, ...]]:
        sql, params = query(customer_ids, {"since": to_db(since)})
        with _cursor(engine, held, sql, params) as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        return [
            (
                c,
                ch,
                o,
                fromiso(t) if type(t) is str and len(t) == 26 and t[10] == " " else from_db(t),
                loads(s) if s else None,
            )
            for c, ch, o, t, s in rows
        ]

    return run


def sqlite_insert(
    engine: Engine, held: Held, table: Table, seen_many: Select
) -> Callable[[list[Any], Callable | None], list[Any]] | None:
    """Insert and commit rows of ``table`` (the ledger's decisions), every column read off the
    row's attribute of that name (no model_dump copy). ``run(rows, pick)``: with ``pick``,
    the transaction first takes SQLite's write lock (``BEGIN IMMEDIATE``: one writer at a
    time, across processes), then ``pick(count_many)`` names the rows not to write, where
    ``count_many(cids, since)`` runs ``seen_many`` (customer id and count rows, binding the
    expanding ``cids`` and ``since``) inside that transaction; those rows are returned.
    None when the SQL is not as expected."""
    dialect = engine.dialect
    compiled = insert(table).compile(dialect=dialect)
    sql, order = str(compiled), list(compiled.positiontup or ())
    count_sql = _in_list(seen_many, engine, "cids", {"since"})
    if sorted(order) != sorted(c.key for c in table.columns) or count_sql is None:
        return None
    procs = [table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in order]
    pairs = list(zip(order, procs, strict=True))
    ts_bind = table.c.ts.type.dialect_impl(dialect).bind_processor(dialect) or (lambda v: v)

    def run(rows: list[Any], pick: Callable | None = None) -> list[Any]:
        with _cursor(engine, held, sql, None) as cur:
            stale: list[Any] = []
            if pick is not None:
                cur.execute("BEGIN IMMEDIATE")

                def count_many(cids: list[str], since: datetime) -> dict[str, int]:
                    cur.execute(*count_sql(cids, {"since": ts_bind(since)}))
                    return dict(cur.fetchall())

                stale = pick(count_many)
            keep = [r for r in rows if not any(r is x for x in stale)]
            params = [[p(getattr(r, n)) if p else getattr(r, n) for n, p in pairs] for r in keep]
            if params:
                cur.executemany(sql, params)
            held.conn.commit()  # durable (the WAL) before the caller acknowledges
        return stale

    return run
