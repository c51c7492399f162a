"""``nextbest bench faults``: decisions timed while a store is hung or down, and the time to
recover when it returns.

A :class:`FaultProxy` stands between the service and a real server (Redis, PostgreSQL): ``up``
forwards, ``hang`` accepts connections and never answers (a stopped or wedged server),
``refuse`` closes every connection and refuses new ones (a dead server). :func:`fault_server`
serves a home whose online store is Redis and whose ledger is a scratch PostgreSQL database,
each through its proxy (the fault tests use the same set-up); :func:`outage_figures` times
``/decide`` through a Redis outage of each kind and :func:`ledger_outage` through a hung
PostgreSQL. Figures, not pass/fail; the floor is the same run's healthy p99. Issue 15's goal:
with Redis hung or down, ``/decide`` p99 under 50 ms with ``fallback: true``, and features read
again within 5 s of Redis returning; with PostgreSQL hung, 503s and nothing acknowledged lost.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from nextbest.db import LOCAL_POSTGRES, engine_for, postgres_unavailable, scratch_postgres
from nextbest.settings import Settings
from serving import run

MODES = ("up", "hang", "refuse")
REDIS = ("127.0.0.1", 6379)
POSTGRES_AT = LOCAL_POSTGRES.rsplit("@", 1)[-1]  # host:port of the machine's PostgreSQL
# A Redis database of these fault runs' own (the feature-store tests use 13, the Redis client
# tests read an empty 14): the keys a run writes are deleted after it.
REDIS_FAULT_DB = 15
CUSTOMERS = 200  # synthetic customers with features in Redis; /decide picks among them
GOALS = {"outage_p99_ms": 50.0, "recovery_s": 5.0}
# PostgreSQL is hung at least this long: the service deems a server silent for
# nextbest.db.PG_SILENCE (3 s) hung, so a shorter hang only delays decisions
LEDGER_HANG_MIN_S = 5.0


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (host, port) whose ``mode`` can be
    switched at any time: ``up``, ``hang`` or ``refuse``. Threads, no event loop of its own."""

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self.mode = "up"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self._listener: socket.socket | None = None
        self._held: socket.socket | None = None  # the port, bound but not listening (refuse)
        self.port = self._listen(self._bound(port))

    @staticmethod
    def _bound(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    def _listen(self, sock: socket.socket) -> int:
        sock.listen(128)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return sock.getsockname()[1]

    def _stop_listening(self) -> None:
        """Connections are refused from now on, but the port stays bound (not listening): a
        closed port in the ephemeral range could be taken by another socket meanwhile, or by
        a client's connect to itself (a TCP self-connect), and the proxy could not return."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept
            listener.close()
        if not self._closed:
            self._held = self._bound(self.port)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: refusing, or the proxy is done
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)  # the 5 s bound is for connecting; the pumps wait on select
            # no Nagle: each chunk goes on at once, as the two ends sent it. With it, a small
            # write behind an unacknowledged one waited for the peer's delayed ACK (40 ms), and
            # /decide on PostgreSQL at 4 clients measured p50 97 ms instead of 22 ms
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy ``src`` to ``dst`` while up; hold everything (read nothing) while hung."""
        try:
            while not self._closed:
                if self.mode != "up":
                    time.sleep(0.005)
                    continue
                readable, _, _ = select.select([src], [], [], 0.02)
                if not readable or self.mode != "up":
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except (OSError, ValueError):  # closed under us: refusing, or the other side went
            pass
        finally:
            self._drop(src, dst)

    def _drop(self, *socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def set(self, mode: str) -> None:
        """Switch to ``up``, ``hang`` or ``refuse``; leaving ``refuse`` listens again."""
        if mode not in MODES:
            raise ValueError(f"mode: one of {', '.join(MODES)}, got {mode!r}")
        previous, self.mode = self.mode, mode
        if mode == "refuse" and previous != "refuse":
            self._stop_listening()
            with self._lock:
                pairs, self._pairs = self._pairs, []
            for pair in pairs:
                self._drop(*pair)
        elif mode != "refuse" and previous == "refuse" and self._held is not None:
            held, self._held = self._held, None
            self._listen(held)

    def close(self) -> None:
        self._closed = True
        self.set("refuse")
        if self._held is not None:
            self._held.close()
            self._held = None

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def customer(i: int) -> str:
    """One of the synthetic customers :func:`fault_server` gave features (and the identity
    graph knows: /decide reads features only for a known customer)."""
    return f"bench{i % CUSTOMERS:06d}"


def _features_down(answer: dict[str, Any]) -> bool:
    return any(why.startswith("features:") for why in answer.get("reasons", []))


def timed_decisions(
    base: str,
    headers: dict[str, str],
    seconds: float,
    concurrency: int = 4,
    body: Callable[[int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``/decide`` from ``concurrency`` closed-loop clients for ``seconds``: the count, the
    statuses, p50/p99/max in ms, how many answers were fallbacks and how many of those fell
    back naming the feature store."""
    body = body or (lambda i: {"customer_id": customer(i), "channel": "web"})
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    fallbacks, named = [0], [0]

    def client(k: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            i = 0
            while time.monotonic() < stop:
                i += 1
                t0 = time.perf_counter()
                r = http.post("/decide", json=body(k * 1_000_003 + i))
                took = (time.perf_counter() - t0) * 1000
                answer = r.json() if r.status_code == 200 else {}
                with lock:
                    latencies.append(took)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    fallbacks[0] += answer.get("fallback") is True
                    named[0] += _features_down(answer)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    n = len(latencies)
    return {
        "clients": concurrency,
        "requests": n,
        "statuses": statuses,
        "non_2xx": sum(c for s, c in statuses.items() if not 200 <= s < 300),
        "fallbacks": fallbacks[0],
        "features_fallbacks": named[0],
        "fallback_share": round(fallbacks[0] / n, 4),
        "features_fallback_share": round(named[0] / n, 4),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "max_ms": round(max(latencies), 1),
    }


def recovery_seconds(
    base: str, headers: dict[str, str], since: float, limit: float = 30.0
) -> float | None:
    """Seconds from ``since`` (``time.monotonic``) to the first decision that read features
    again (no reason naming ``features``); None if none did within ``limit``."""
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        while time.monotonic() - since < limit:
            r = http.post("/decide", json={"customer_id": customer(0), "channel": "web"})
            if r.status_code == 200 and not _features_down(r.json()):
                return round(time.monotonic() - since, 2)
            time.sleep(0.02)
    return None


def outage_figures(
    base: str,
    headers: dict[str, str],
    proxy: FaultProxy,
    seconds: float = 5.0,
    concurrency: int = 4,
) -> dict[str, Any]:
    """``/decide`` timed with the proxied store up, hung and refusing, and the recovery time
    after each outage; each outage's p99 also as a multiple of the healthy p99 (the floor).
    Leaves the proxy up."""
    figures: dict[str, Any] = {"up": timed_decisions(base, headers, seconds, concurrency)}
    try:
        for mode in ("hang", "refuse"):
            proxy.set(mode)
            figures[mode] = timed_decisions(base, headers, seconds, concurrency)
            proxy.set("up")
            figures[mode]["recovery_s"] = recovery_seconds(base, headers, time.monotonic())
            healthy = figures["up"]["p99_ms"]
            figures[mode]["p99_vs_healthy"] = round(figures[mode]["p99_ms"] / healthy, 2)
    finally:
        proxy.set("up")
    return figures


@dataclass
class Answer:
    end: float  # time.monotonic() when the answer arrived
    status: int
    ms: float
    decision_id: str | None


@dataclass
class Clients:
    """Closed-loop ``/decide`` clients in threads for the ``with`` block, every answer kept."""

    base: str
    headers: dict[str, str]
    concurrency: int = 4
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(k,), daemon=True)
            for k in range(self.concurrency)
        ]

    def _client(self, k: int) -> None:
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=30) as http:
            i = 0
            while not self._stop.is_set():
                i += 1
                t0 = time.perf_counter()
                body = {"customer_id": customer(k * 1_000_003 + i), "channel": "web"}
                try:
                    r = http.post("/decide", json=body)
                    status, got = r.status_code, r.json() if r.status_code == 200 else {}
                except httpx.HTTPError:
                    status, got = 0, {}  # no answer within 30 s: counted, never acknowledged
                ms = (time.perf_counter() - t0) * 1000
                self.answers.append(Answer(time.monotonic(), status, ms, got.get("decision_id")))

    def ok_since(self, since: float) -> float | None:
        """When the first 2xx after ``since`` arrived."""
        return next((a.end for a in list(self.answers) if a.end >= since and a.status == 200),
                    None)  # fmt: skip

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def ledger_outage(
    base: str,
    headers: dict[str, str],
    proxy: FaultProxy,
    ledger_url: str,
    seconds: float = LEDGER_HANG_MIN_S,
    concurrency: int = 4,
    limit: float = 30.0,
) -> dict[str, Any]:
    """``/decide`` from closed-loop clients while the ledger's PostgreSQL is hung for
    ``seconds`` (after a second of healthy decisions): the time to the first 503, the p99 of
    the 503s after it, the seconds until a decision is written again once it returns, and the
    acknowledged decisions missing from the ledger (``ledger_url``, read directly)."""
    from record.ledger import Ledger

    with Clients(base, headers, concurrency) as clients:
        time.sleep(1.0)
        proxy.set("hang")
        hung_at = time.monotonic()
        try:
            time.sleep(seconds)
        finally:
            proxy.set("up")
        back_at = time.monotonic()
        while clients.ok_since(back_at) is None and time.monotonic() - back_at < limit:
            time.sleep(0.02)
    answers = clients.answers
    during = [a for a in answers if hung_at <= a.end < back_at]
    first = next((a for a in during if a.status == 503), None)
    after = [a.ms for a in during if first and a.status == 503 and a.end > first.end]
    back = clients.ok_since(back_at)
    acked = {a.decision_id for a in answers if a.status == 200 and a.decision_id}
    logged = set(Ledger(engine_for(ledger_url)).logs()["decision_id"])
    statuses: dict[int, int] = {}
    for a in during:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    return {
        "clients": concurrency,
        "hung_seconds": seconds,
        "statuses_while_hung": statuses,
        "first_503_s": round(first.end - hung_at, 2) if first else None,
        "first_503_ms": round(first.ms, 1) if first else None,
        "after_first_503s": len(after),
        "p99_503_ms": round(float(np.percentile(after, 99)), 1) if after else None,
        "max_503_ms": round(max(after), 1) if after else None,
        "recovery_s": round(back - back_at, 2) if back is not None else None,
        "acknowledged": len(acked),
        "missing": len(acked - logged),
    }


def redis_unavailable() -> str | None:
    """None when Redis answers on 127.0.0.1:6379, else why not (one line)."""
    import redis

    client = redis.Redis(*REDIS, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        client.ping()
        return None
    except Exception as exc:  # noqa: BLE001 - the caller skips or refuses with this line
        return f"Redis at {REDIS[0]}:{REDIS[1]} does not answer: {type(exc).__name__}"
    finally:
        client.close()


@contextlib.contextmanager
def _redis_db_restored(db: int) -> Iterator[None]:
    """The keys a block adds to Redis database ``db`` are deleted after it."""
    import redis

    client = redis.Redis(*REDIS, db=db, socket_timeout=10)
    before = set(client.scan_iter(count=1000))
    try:
        yield
    finally:
        added = [k for k in client.scan_iter(count=1000) if k not in before]
        for i in range(0, len(added), 500):
            client.delete(*added[i : i + 500])
        client.close()


@contextlib.contextmanager
def _proxied_ledger(use_postgres: bool) -> Iterator[tuple[FaultProxy | None, str, str]]:
    """A scratch PostgreSQL database behind a proxy: (proxy, the URL through it, the URL
    direct); or (None, "", ""): the home's SQLite ledger."""
    if not use_postgres:
        yield None, "", ""
        return
    host, port = POSTGRES_AT.split(":")
    with scratch_postgres("nb_faults") as url, FaultProxy((host, int(port))) as proxy:
        proxied = url.replace(POSTGRES_AT, f"127.0.0.1:{proxy.port}")
        try:
            yield proxy, proxied, url
        finally:
            engine_for(proxied).dispose()  # before the proxy closes under its connections


@dataclass
class FaultServer:
    base: str
    settings: Settings
    redis: FaultProxy
    postgres: FaultProxy | None  # None: the ledger is the home's SQLite
    ledger_url: str  # the ledger read directly, not through the proxy
    log: Path
    prepared: dict[str, Any]


@contextlib.contextmanager
def fault_server(
    home: Path,
    models: Callable[[Settings], Any] | None = None,
    redis_db: int = REDIS_FAULT_DB,
) -> Iterator[FaultServer]:
    """A served Nextbest over ``home`` whose online store is Redis (database ``redis_db``)
    through a :class:`FaultProxy`, with :data:`CUSTOMERS` synthetic customers materialised to it
    through the proxy and known to the identity graph; the ledger (and graph) on a scratch
    PostgreSQL database through a second proxy, or SQLite when PostgreSQL does not answer.
    ``models(settings)`` runs first (trains and promotes models, or breaks the store). The
    keys added to Redis and the scratch database are gone afterwards. Redis must answer."""
    from benchmarks.decide import prepare_features

    with (
        _redis_db_restored(redis_db),
        FaultProxy(REDIS) as redis_proxy,
        _proxied_ledger(postgres_unavailable() is None) as (pg_proxy, url, direct),
    ):
        env = {
            "NEXTBEST_ONLINE_STORE": "redis",
            "NEXTBEST_REDIS_URL": f"127.0.0.1:{redis_proxy.port},db={redis_db}",
            "NEXTBEST_REPORT_EVERY_MINUTES": "0",  # no report build beside the measurement
        }
        if url:
            env["NEXTBEST_LEDGER_URL"] = url
        settings = Settings(
            home=home,
            online_store="redis",
            redis_url=env["NEXTBEST_REDIS_URL"],
            ledger_url=url or None,
        ).ensure_dirs()
        prepared: dict[str, Any] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Feast's and pandas' own, not ours
            if models is not None:
                prepared["models"] = models(settings)
            prepared["features"] = prepare_features(settings, CUSTOMERS)
        log = home / "server.log"
        port = run.free_port()
        proc = run.start(settings, port, log=log, **env)
        try:
            run.wait_ready(proc, port, timeout=180)
            yield FaultServer(f"http://127.0.0.1:{port}", settings, redis_proxy, pg_proxy,
                              direct or settings.ledger_db_url, log, prepared)  # fmt: skip
        finally:
            run.stop(proc, signal.SIGTERM)


def measure_faults(
    server: FaultServer, seconds: float = 8.0, concurrencies: tuple[int, ...] = (1, 4)
) -> dict[str, Any]:
    """Every phase against a served :func:`fault_server`: Redis up, hung and refusing at each
    concurrency, then PostgreSQL hung (when the ledger is on it; ``seconds`` but at least
    :data:`LEDGER_HANG_MIN_S`), and the goals."""
    headers = {"X-API-Key": server.settings.channel_keys[0]}
    redis = {
        str(c): outage_figures(server.base, headers, server.redis, seconds, c)
        for c in concurrencies
    }
    ledger = None
    if server.postgres is not None:
        c = max(concurrencies)
        ledger = ledger_outage(
            server.base,
            headers,
            server.postgres,
            server.ledger_url,
            max(seconds, LEDGER_HANG_MIN_S),
            c,
        )
        healthy = redis[str(c)]["up"]["p99_ms"]
        if ledger["p99_503_ms"] is not None:
            ledger["p99_503_vs_healthy"] = round(ledger["p99_503_ms"] / healthy, 2)
    outages = [f for by_mode in redis.values() for m, f in by_mode.items() if m != "up"]
    goals = {
        "redis_outage_p99<50ms": all(f["p99_ms"] < GOALS["outage_p99_ms"] for f in outages),
        "redis_outage_fallback_share==1": all(f["fallback_share"] == 1.0 for f in outages),
        "redis_recovery<5s": all(
            f["recovery_s"] is not None and f["recovery_s"] < GOALS["recovery_s"] for f in outages
        ),
        "redis_outage_non_2xx==0": all(f["non_2xx"] == 0 for f in outages),
    }
    if ledger is not None:
        goals["postgres_missing==0"] = ledger["missing"] == 0
    return {"seconds": seconds, "redis": redis, "postgres": ledger, "goals": goals}


def servers_missing() -> str | None:
    """Why the fault benchmark cannot run here (Redis or PostgreSQL does not answer), or None."""
    return redis_unavailable() or postgres_unavailable(LOCAL_POSTGRES)


def bench_faults(seconds: float = 8.0) -> dict[str, Any]:
    """A fresh home with promoted models (trained on a small world, as ``bench decide``) and
    :data:`CUSTOMERS` synthetic customers' features in Redis, served behind the proxies; every
    fault phase of :func:`measure_faults`. Redis and PostgreSQL must answer."""
    from rich.progress import Progress

    from benchmarks.decide import prepare_models

    with (
        tempfile.TemporaryDirectory(prefix="nextbest-faults-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        with Progress(transient=True) as progress:
            progress.add_task("training models, materialising features to Redis", total=None)
            server = stack.enter_context(fault_server(Path(tmp), prepare_models))
        return {"customers": CUSTOMERS, "workers": server.settings.workers,
                "prepared": server.prepared} | measure_faults(server, seconds)  # fmt: skip
