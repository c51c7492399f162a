"""Feast's Redis online store with timeouts and no retries: a hung or dead Redis fails a read
within ``feature_timeout_ms``, not after redis-py's 10 retries of 5 s timeouts."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest

from benchmarks.faults import FaultProxy
from features.store import redis_connection
from nextbest.settings import Settings

REDIS_FAULT_DB = 14  # a database of this file's own (nothing is written to it)


@pytest.mark.parametrize(
    ("url", "timeout_ms", "expected"),
    [
        ("127.0.0.1:6379", 100, "127.0.0.1:6379,socket_timeout=0.1,socket_connect_timeout=0.1"),
        ("redis:6379,db=2", 250, "redis:6379,db=2,socket_timeout=0.25,socket_connect_timeout=0.25"),
        # the URL's own value wins
        ("r:1,socket_timeout=2", 100, "r:1,socket_timeout=2,socket_connect_timeout=0.1"),
        (
            "r:1,socket_timeout=2,socket_connect_timeout=3",
            100,
            "r:1,socket_timeout=2,socket_connect_timeout=3",
        ),
    ],
)
def test_redis_connection_carries_the_timeouts(url: str, timeout_ms: int, expected: str) -> None:
    settings = Settings(online_store="redis", redis_url=url, feature_timeout_ms=timeout_ms)
    assert redis_connection(settings) == expected


def test_the_sqlite_store_is_configured_as_before(tmp_path: Path) -> None:
    from features.store import repo_config

    online = repo_config(Settings(home=tmp_path)).online_store
    assert online.type == "sqlite" and online.path == str(tmp_path / "features" / "online.db")


def _redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.5).ping())
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture
def redis_store(tmp_path: Path):  # noqa: ANN201
    """An applied Feast repo on Redis, through a fault proxy (the proxy and the store)."""
    if not _redis_up():
        pytest.skip("Redis is not answering on 127.0.0.1:6379 (Redis fault test)")
    from features.store import apply_repo, get_store

    with FaultProxy(("127.0.0.1", 6379)) as proxy:
        settings = Settings(
            home=tmp_path,
            online_store="redis",
            redis_url=f"127.0.0.1:{proxy.port},db={REDIS_FAULT_DB}",
            feature_timeout_ms=100,
        )
        store = get_store(settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            apply_repo(store)
        yield proxy, store


@pytest.mark.parametrize("mode", ["hang", "refuse"])
def test_a_read_fails_fast_when_redis_hangs_or_refuses(redis_store, mode: str) -> None:  # noqa: ANN001
    """Before: a hung Redis held the read for 5 s per try, 11 tries (about a minute); a
    refusing one for about a second of retries."""
    from features.store import read_online

    proxy, store = redis_store
    assert read_online(store, "profile_v1", ["nobody"])[0]["customer_id"] == "nobody"
    proxy.set(mode)
    t0 = time.perf_counter()
    with pytest.raises(Exception, match="Timeout|timed out|Connection|refused"):
        read_online(store, "profile_v1", ["nobody"])
    assert time.perf_counter() - t0 < 1.0  # one 100 ms timeout, no retries
    proxy.set("up")
    t0 = time.perf_counter()
    while True:  # a connection broken by the outage is dropped, and the next read works
        try:
            row = read_online(store, "profile_v1", ["nobody"])[0]
            break
        except Exception:
            assert time.perf_counter() - t0 < 2.0
    assert row["customer_id"] == "nobody" and row["plan"] is None
