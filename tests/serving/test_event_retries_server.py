"""A real ``nextbest serve`` with its online store on Redis behind a TCP proxy this test
stops and starts (the machine's Redis is never touched): an event sent three times is in the
basket and the online features once; during the outage ``/events`` answers 503 naming the
features, and the retry once Redis is back completes it. Then an ``/outcome`` key reused for
another payload is a 409. On an SQLite ledger and on a PostgreSQL one."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from nextbest.settings import Settings
from serving import run
from tests.serving.conftest import CHANNEL

REDIS = ("127.0.0.1", 6379)


class Proxy:
    """A TCP proxy to Redis on a fixed local port: ``stop`` closes the port and every
    connection through it (Redis down, to its clients); ``start`` opens it again."""

    def __init__(self) -> None:
        self.port = run.free_port()
        self._open: list[socket.socket] = []
        self._server: socket.socket | None = None

    def start(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:  # shutdown first: it wakes the thread blocked in accept
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        for s in self._open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._open.clear()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return  # stopped
            upstream = socket.create_connection(REDIS)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _redis_unavailable() -> str | None:
    try:
        socket.create_connection(REDIS, timeout=1).close()
    except OSError as exc:
        return f"no Redis at {REDIS[0]}:{REDIS[1]} ({exc})"
    return None


@pytest.fixture
def proxy() -> Any:
    why = _redis_unavailable()
    if why is not None:
        pytest.skip(why)
    p = Proxy()
    p.start()
    yield p
    p.stop()


def _event(event_id: str, login: str, product: str) -> dict[str, Any]:
    ts = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    return {"event_id": event_id, "ts": ts, "channel": "app", "event_type": "basket_add",
            "login_id": login, "product_id": product, "value": 5.0}  # fmt: skip


def _post(client: httpx.Client, path: str, body: dict, tries: int = 1) -> httpx.Response:
    """POST, retried like a client does on a 503 (a pool's stale connection after an outage)."""
    for _ in range(tries - 1):
        r = client.post(path, json=body)
        if r.status_code != 503:
            return r
        time.sleep(0.5)
    return client.post(path, json=body)


@pytest.mark.slow
@pytest.mark.parametrize("ledger", ["sqlite", "postgresql"])
def test_event_retries_and_reused_keys_on_a_real_server(
    ledger: str, proxy: Proxy, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from benchmarks.features import _synthetic_snapshots
    from features.ingest import read_realtime
    from features.store import apply_repo, get_store

    url = request.getfixturevalue("pg_url") if ledger == "postgresql" else None
    redis_url = f"127.0.0.1:{proxy.port}"
    settings = Settings(home=tmp_path, workers=1, online_store="redis", redis_url=redis_url,
                        ledger_url=url).ensure_dirs()  # fmt: skip
    _synthetic_snapshots(settings, 3, datetime.now(UTC) - timedelta(minutes=5))
    store = get_store(settings)
    apply_repo(store)  # the feature views; nothing materialised (no shared Redis keys)
    env = {"NEXTBEST_ONLINE_STORE": "redis", "NEXTBEST_REDIS_URL": redis_url}
    if url:
        env["NEXTBEST_LEDGER_URL"] = url
    login, log = uuid.uuid4().hex, tmp_path / "server.log"
    with (
        run.served(settings, log=log, **env) as base,
        httpx.Client(base_url=base, headers=CHANNEL, timeout=30) as client,
    ):
        first = _event("srv-1", login, "data_10gb")
        answers = [_post(client, "/events", first) for _ in range(3)]
        assert [r.status_code for r in answers] == [200] * 3, answers[-1].text
        assert [r.json()["pushed"] for r in answers] == [True, False, False]
        cid = answers[0].json()["customer_id"]
        assert read_realtime(store, cid)["basket_items"] == 1

        proxy.stop()  # Redis down
        second = _event("srv-2", login, "phone_x")
        started = time.monotonic()
        down = _post(client, "/events", second)
        assert down.status_code == 503, down.text
        assert time.monotonic() - started < 5  # refused at once, not hung
        assert down.json()["field"] == "features"
        assert down.json()["error"].startswith("features: ConnectionError"), down.text
        proxy.start()  # Redis back: the client's retry completes the event
        back = _post(client, "/events", second, tries=3)
        assert back.status_code == 200, back.text
        assert read_realtime(store, cid)["basket_items"] == 2  # each event once
        profile = client.get(f"/profile/{cid}").json()
        assert profile["basket"]["products"] == ["data_10gb", "phone_x"]

        key = uuid.uuid4().hex
        click = {"idempotency_key": key, "customer_id": cid, "type": "revenue", "value": 9.0}
        assert client.post("/outcome", json=click).json()["recorded"] is True
        same = client.post("/outcome", json=click)
        assert same.status_code == 200 and same.json()["recorded"] is False
        other = client.post("/outcome", json={**click, "value": 10.0})
        assert other.status_code == 409, other.text
        body = other.json()
        assert body["field"] == "idempotency_key"
        reason = "already recorded with another payload (value differs)"
        assert body["error"] == f"idempotency_key: {reason}"
        assert (body["stored"]["idempotency_key"], body["stored"]["value"]) == (key, 9.0)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
