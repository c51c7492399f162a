"""SQLAlchemy engines for the ledger and identity graph: SQLite (WAL) by default, PostgreSQL
by URL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, MetaData, create_engine, event, inspect, text


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per URL. SQLite gets WAL and synchronous=FULL so an acknowledged row
    survives a SIGKILL; busy_timeout lets several workers share the file; secure_delete zeroes
    what a delete or update frees, so an erased person's bytes do not stay in the file."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            # erased rows leave no bytes behind in freed cells and pages (see serving.erasure)
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def is_sqlite_file(engine: Engine) -> bool:
    """A SQLite database in a file: WAL and one connection per thread apply (a memory database
    lives in one pooled connection; PostgreSQL manages its own)."""
    return engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")


# The PostgreSQL of development machines and CI (trust auth, database ``test``): the scale-out
# path's tests and benchmarks each work in a database of their own on it.
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def postgres_unavailable(server: str = LOCAL_POSTGRES) -> str | None:
    """None when the server's ``test`` database answers, else why not (one line)."""
    admin = create_engine(f"{server}/test".replace("://", "+psycopg://", 1))
    try:
        with admin.connect() as conn:
            conn.execute(text("select 1"))
        return None
    except Exception as exc:  # noqa: BLE001 - the caller skips or leaves a figure out
        where = server.rsplit("@", 1)[-1]
        return f"PostgreSQL at {where}/test does not answer: {type(exc).__name__}"
    finally:
        admin.dispose()


@contextmanager
def scratch_postgres(prefix: str, server: str = LOCAL_POSTGRES) -> Iterator[str]:
    """A throw-away database on ``server``, dropped afterwards (its pooled connections first)."""
    admin = create_engine(
        f"{server}/test".replace("://", "+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    url = f"{server}/{prefix}_{uuid.uuid4().hex[:10]}"
    name = url.rsplit("/", 1)[-1]
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield url
    finally:
        engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


DDL_LOCK = 0x4E425354  # one advisory-lock key for every Nextbest schema change


def create_tables(engine: Engine, metadata: MetaData) -> None:
    """``create_all`` that several workers may run at once: two PostgreSQL sessions creating
    the same table collide in the catalogue (a unique violation), so creators take turns on
    a transaction-scoped advisory lock. SQLite serialises writers on its own. What was added
    since a database was created comes too (``create_all`` skips existing tables): nullable
    columns (no data moves) and indexes. Honours a ``schema_translate_map`` (tests and
    tenants put a graph in its own schema)."""
    schema = engine.get_execution_options().get("schema_translate_map", {}).get(None)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DDL_LOCK})
        metadata.create_all(conn)
        inspector = inspect(conn)
        for table in metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name, schema=schema)}
            for col in table.columns:
                if col.name not in have and col.nullable:
                    kind = col.type.compile(dialect=engine.dialect)
                    name = f"{schema}.{table.name}" if schema else table.name
                    conn.execute(text(f"ALTER TABLE {name} ADD COLUMN {col.name} {kind}"))
            for index in table.indexes:
                index.create(conn, checkfirst=True)


def checkpoint(engine: Engine) -> None:
    """Copy an SQLite WAL into the database and truncate it: after an erasure, the pages that
    held the erased rows leave the ``-wal`` file. Best effort (a reader mid-transaction keeps
    the WAL until the next checkpoint); nothing to do on PostgreSQL."""
    if is_sqlite_file(engine):
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
