"""SQLAlchemy engines for the ledger and identity graph: SQLite (WAL) by default, PostgreSQL
by URL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, MetaData, create_engine, event, inspect, text

from nextbest.breaker import Breaker, CircuitOpen


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
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_timeout=PG_POOL_TIMEOUT,
        connect_args=_pg_connect_args(url),
    )
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        breaker = Breaker("ledger", failures=1, reset_seconds=PG_RESET_SECONDS)

        @event.listens_for(engine, "do_connect")
        def _connect(_dialect, _record, cargs, cparams):  # noqa: ANN001, ANN202
            """New connections only while the server answers: after a timeout the circuit
            opens, and every connect is refused at once until a probe gets through."""
            import psycopg

            try:
                breaker.admit()
            except CircuitOpen as exc:
                raise psycopg.OperationalError(str(exc)) from None
            try:
                conn = _silence_bounded().connect(*cargs, **cparams)
            except Exception as exc:
                breaker.failure(exc)
                raise
            conn.breaker = breaker
            breaker.success()
            return conn

    return engine


# A hung PostgreSQL must cost a request a 503 within the request budget (10 s), not a hang.
# A URL's own query parameters win (``?connect_timeout=10&options=...``).
PG_CONNECT_TIMEOUT = 2  # seconds to connect and authenticate (libpq's least)
PG_LOCK_TIMEOUT_MS = 3000  # a lock (a customer's advisory lock, a row) waited for at most
PG_IDLE_IN_TRANSACTION_MS = 60_000  # a session that holds a transaction open, silent, is cut
PG_POOL_TIMEOUT = 3.0  # seconds to wait for a pooled connection
PG_SILENCE = 3.0  # seconds a server may stay silent mid-exchange before it is deemed hung
_silence_bound: float | None = None  # None: wait (a batch job's long query); the service sets it


def bound_silence(seconds: float | None = PG_SILENCE) -> None:
    """Treat a PostgreSQL server silent ``seconds`` in the middle of an exchange as hung, in
    this process. The service calls it: a request must get its 503 within its budget. Batch
    jobs (reports, training, replays) leave it unset, so a long aggregate that keeps the
    server silent while it computes is never cut."""
    global _silence_bound
    _silence_bound = seconds


PG_RESET_SECONDS = 2.0  # after a timeout, connects are refused at once this long, then probed


def _pg_connect_args(url: str) -> dict[str, object]:
    """libpq options the URL does not set: a connect timeout, and server-side lock and
    idle-in-transaction timeouts. No server-wide statement timeout: the same engine runs the
    reports' long reads; a server that stops answering is caught client-side in the service
    (``bound_silence``)."""
    from sqlalchemy.engine import make_url

    given = make_url(url).query
    args: dict[str, object] = {}
    if "connect_timeout" not in given:
        args["connect_timeout"] = PG_CONNECT_TIMEOUT
    if "options" not in given:
        args["options"] = (
            f"-c lock_timeout={PG_LOCK_TIMEOUT_MS} "
            f"-c idle_in_transaction_session_timeout={PG_IDLE_IN_TRANSACTION_MS}"
        )
    return args


@lru_cache(maxsize=1)
def _silence_bounded() -> type:
    """A psycopg ``Connection`` that gives up on a server silent for ``bound_silence`` seconds
    in the middle of an exchange (a query, a commit, the pool's ping) and closes itself, so the
    pool drops it. psycopg waits on a socket without end; TCP keepalives and
    ``tcp_user_timeout`` do not help when the peer's kernel still acknowledges (a stopped or
    wedged server, a proxy). A long read that keeps sending rows is never silent that long."""
    import psycopg

    class SilenceBounded(psycopg.Connection):
        def wait(self, gen, interval=0.1, timeout=None):  # noqa: ANN001, ANN202
            silence = _silence_bound
            if timeout is not None or silence is None:  # psycopg's bounded waits; batch jobs
                return super().wait(gen, interval, timeout)
            try:
                return super().wait(_watched(gen, silence), min(interval, 0.1), None)
            except HungServer as exc:
                self.pgconn.finish()  # its protocol state is unknown: never reused
                breaker = getattr(self, "breaker", None)
                if breaker is not None:
                    breaker.failure(exc)
                raise psycopg.OperationalError(str(exc)) from None

    return SilenceBounded


class HungServer(Exception):
    """Raised inside a wait when the server has said nothing for too long."""


def _watched(gen, silence: float):  # noqa: ANN001, ANN202
    """``gen`` (a psycopg wait generator) passed through, raising :class:`HungServer` when the
    socket stays idle ``silence`` seconds: the wait function sends ``Ready.NONE`` (0) each
    time its interval passes with nothing ready."""
    import time

    last = time.monotonic()
    try:
        state = next(gen)
        while True:
            ready = yield state
            if ready:
                last = time.monotonic()
            elif time.monotonic() - last > silence:
                gen.close()
                raise HungServer(f"PostgreSQL silent for {silence:g} s")
            state = gen.send(ready)
    except StopIteration as stop:
        return stop.value


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
