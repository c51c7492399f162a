"""Decisions timed while a store is hung or down, and the time to recover when it returns.

A :class:`FaultProxy` stands between the service and a real server (Redis, PostgreSQL): ``up``
forwards, ``hang`` accepts connections and never answers (a stopped or wedged server),
``refuse`` closes every connection and refuses new ones (a dead server). The service is pointed
at the proxy; :func:`outage_figures` times ``/decide`` through an outage of each kind.
"""

from __future__ import annotations

import contextlib
import select
import socket
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

MODES = ("up", "hang", "refuse")


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
        self.port = self._listen(port)

    def _listen(self, port: int) -> int:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return sock.getsockname()[1]

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
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            with self._lock:
                pairs, self._pairs = self._pairs, []
            for pair in pairs:
                self._drop(*pair)
        elif mode != "refuse" and previous == "refuse":
            self._listen(self.port)

    def close(self) -> None:
        self._closed = True
        self.set("refuse")

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed_decisions(
    base: str,
    headers: dict[str, str],
    seconds: float,
    concurrency: int = 4,
    body: Callable[[int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``/decide`` from ``concurrency`` closed-loop clients for ``seconds``: the count, the
    statuses, p50/p99/max in ms, and how many fell back naming the feature store."""
    body = body or (lambda i: {"customer_id": f"fault-{i}", "channel": "web"})
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    named = [0]

    def client(k: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            i = 0
            while time.monotonic() < stop:
                i += 1
                t0 = time.perf_counter()
                r = http.post("/decide", json=body(k * 1_000_000 + i))
                took = (time.perf_counter() - t0) * 1000
                features_down = r.status_code == 200 and any(
                    why.startswith("features:") for why in r.json()["reasons"]
                )
                with lock:
                    latencies.append(took)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    named[0] += features_down

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return {
        "requests": len(latencies),
        "statuses": statuses,
        "features_fallbacks": named[0],
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
    }


def recovery_seconds(
    base: str, headers: dict[str, str], since: float, limit: float = 30.0
) -> float | None:
    """Seconds from ``since`` (``time.monotonic``) to the first decision that read features
    again (no reason naming ``features``); None if none did within ``limit``."""
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        while time.monotonic() - since < limit:
            r = http.post("/decide", json={"customer_id": "fault-recovery", "channel": "web"})
            if r.status_code == 200 and not any(
                why.startswith("features:") for why in r.json()["reasons"]
            ):
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
    after each outage: the figures of issue 15's goal (p99 < 50 ms with the store hung or down,
    features again within 5 s of its return). Leaves the proxy up."""
    figures: dict[str, Any] = {"up": timed_decisions(base, headers, seconds, concurrency)}
    try:
        for mode in ("hang", "refuse"):
            proxy.set(mode)
            figures[mode] = timed_decisions(base, headers, seconds, concurrency)
            proxy.set("up")
            figures[mode]["recovery_s"] = recovery_seconds(base, headers, time.monotonic())
    finally:
        proxy.set("up")
    return figures
