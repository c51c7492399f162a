"""The decision ledger's SQLite fast paths: a decision's insert and its contact-history read.

Once or twice per decision, SQLAlchemy Core's Connection, execution context and result objects
cost more than the statements themselves. These run SQLAlchemy's own SQL text and type
conversions (datetimes, JSON, booleans) on a DBAPI connection of the engine, so rows and values
are byte-identical to ``conn.execute``'s, and errors are raised as SQLAlchemy's.
``record.ledger.Ledger`` uses them for an SQLite file and the Core path everywhere else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, insert
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


def _raw(engine: Engine, held: Held, sql: str, params: Any, write: bool) -> list[tuple]:
    conn = held.get(engine)
    try:
        cur = conn.cursor()
        try:
            if write:
                cur.executemany(sql, params)
                conn.commit()  # durable (the WAL) before the caller acknowledges
                return []
            cur.execute(sql, params)
            return cur.fetchall()
        finally:
            cur.close()
    except engine.dialect.loaded_dbapi.Error as exc:
        held.drop()
        raise DBAPIError.instance(sql, params, exc, engine.dialect.loaded_dbapi.Error) from exc


def sqlite_history(
    engine: Engine, held: Held, history: CompoundSelect, ts_type: TypeEngine[Any]
) -> Callable[[str, datetime], list[tuple[Any, ...]]] | None:
    """``history`` (the ledger's contact-history query: binds ``cid`` and ``since``, rows of
    channel, offer and a ``ts_type`` time) for one customer (measured in the decision
    pipeline: ~100 -> ~35 us). None when its SQL is not the positional kind expected."""
    dialect = engine.dialect
    compiled = history.compile(dialect=dialect)
    sql, order = str(compiled), list(compiled.positiontup or ())
    impl = ts_type.dialect_impl(dialect)
    to_db = impl.bind_processor(dialect) or (lambda v: v)
    from_db = impl.result_processor(dialect, None) or (lambda v: v)
    if set(order) != {"cid", "since"}:  # not the positional SQL expected: the general path
        return None

    def parse(t: Any) -> Any:
        # SQLAlchemy's own format, "YYYY-MM-DD HH:MM:SS.ffffff": the C parser, same datetime
        if type(t) is str and len(t) == 26 and t[10] == " ":
            return datetime.fromisoformat(t)
        return from_db(t)

    def run(customer_id: str, since: datetime) -> list[tuple[Any, ...]]:
        values = {"cid": customer_id, "since": to_db(since)}
        rows = _raw(engine, held, sql, [values[name] for name in order], write=False)
        return [(ch, o, parse(t)) for ch, o, t in rows]

    return run


def sqlite_insert(engine: Engine, held: Held, table: Table) -> Callable[[list[Any]], None] | None:
    """Insert and commit rows of ``table`` (the ledger's decisions), every column read off the
    row's attribute of that name (no model_dump copy). None when the SQL is not as expected."""
    dialect = engine.dialect
    compiled = insert(table).compile(dialect=dialect)
    sql, order = str(compiled), list(compiled.positiontup or ())
    if sorted(order) != sorted(c.key for c in table.columns):
        return None
    procs = [table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in order]
    pairs = list(zip(order, procs, strict=True))

    def run(rows: list[Any]) -> None:
        params = [[p(getattr(r, n)) if p else getattr(r, n) for n, p in pairs] for r in rows]
        _raw(engine, held, sql, params, write=True)

    return run
