"""Who may call what (issue 12, item 14): every route of the service, walked with no key, a
channel key and an admin key, in process and on a real ``bentoml serve``.

The routes are read from the app itself, so a route BentoML adds in a later version fails
``test_access_table_lists_every_route`` until it is given a row (and is closed meanwhile:
``serving.auth`` lets nothing through without a key unless its path is public).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from nextbest.settings import Settings
from serving import run
from tests.serving.conftest import ADMIN, CHANNEL

KEYS: dict[str, dict[str, str]] = {"none": {}, "channel": CHANNEL, "admin": ADMIN}

# (method, route as the app declares it) -> (path to call, JSON body, status with no key,
# a channel key, an admin key). A body that fails validation shows the key was accepted
# without doing anything: the 400 comes from the route behind the guard.
ACCESS: dict[tuple[str, str], tuple[str, Any, int, int, int]] = {
    ("GET", "/livez"): ("/livez", None, 200, 200, 200),
    ("GET", "/readyz"): ("/readyz", None, 200, 200, 200),
    ("GET", "/healthz"): ("/healthz", None, 200, 200, 200),
    ("GET", "/metrics"): ("/metrics", None, 401, 403, 200),
    ("GET", "/docs.json"): ("/docs.json", None, 401, 200, 200),
    ("GET", "/schema.json"): ("/schema.json", None, 401, 200, 200),
    ("GET", "/"): ("/", None, 401, 200, 200),  # the Swagger UI page
    ("GET", "/static_content/{path}"): ("", None, 401, 200, 200),  # its scripts (path: below)
    ("POST", "/decide"): ("/decide", {}, 401, 400, 400),
    ("POST", "/outcome"): ("/outcome", {}, 401, 400, 400),
    ("POST", "/events"): ("/events", {}, 401, 400, 400),
    ("GET", "/profile/{customer_id}"): ("/profile/x?channel=fax", None, 401, 400, 400),
    ("GET", "/outbox"): ("/outbox?channel=fax", None, 401, 400, 400),
    # an agent or clerk ends or pauses a journey: a channel key, like the profile they read
    ("POST", "/journeys/{action}"): ("/journeys/stop", {}, 401, 400, 400),
    ("GET", "/reports"): ("/reports?format=xml", None, 401, 400, 400),
    ("POST", "/reports/refresh"): ("/reports/refresh", None, 401, 403, 202),  # starts a build
    ("POST", "/erase"): ("/erase", {}, 401, 403, 400),
    ("POST", "/promote/{model}"): ("/promote/no_such_model", None, 401, 403, 400),
}


def app_routes(app: Any, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(method, declared route, a path to call) of every endpoint under ``app``, mounts
    included; HEAD is GET's twin and is walked as GET. A mounted folder of files gives one
    route, called with its first file."""
    for route in getattr(app, "routes", []):
        if isinstance(route, Route):
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                yield method, prefix + route.path, prefix + route.path
        elif isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            folder = Path(route.app.directory)
            first = min(p for p in folder.rglob("*") if p.is_file())
            path = f"{prefix}{route.path}/{first.relative_to(folder).as_posix()}"
            yield "GET", f"{prefix}{route.path}/{{path}}", path
        else:  # a mounted app (ours at "/"): its routes
            yield from app_routes(route.app, prefix + route.path)


def walk(request: Any, routes: list[tuple[str, str, str]]) -> list[str]:
    """Every route with every key; the calls that did not answer as ACCESS says."""
    wrong = []
    for method, declared, static_path in routes:
        path, body, *statuses = ACCESS[(method, declared)]
        for (who, headers), expected in zip(KEYS.items(), statuses, strict=True):
            r = request(method, path or static_path, json=body, headers=headers)
            if r.status_code != expected:
                wrong.append(f"{method} {declared} with {who} key: {r.status_code} != {expected}")
    return wrong


def test_access_table_lists_every_route(client: TestClient) -> None:
    """A route nobody decided about fails here (it answers 401 without a key meanwhile)."""
    declared = {(method, route) for method, route, _ in app_routes(client.app)}
    assert declared == set(ACCESS)


def test_every_route_answers_each_key_as_the_table_says(client: TestClient) -> None:
    assert walk(client.request, list(app_routes(client.app))) == []


def test_no_key_opens_nothing_outside_the_public_probes(client: TestClient) -> None:
    """Default deny: any path, routed or not, needs a key unless it is a probe."""
    for path in ("/no-such-route", "/docs", "/livez/", "/metrics/", "/erase/"):
        r = client.get(path)
        assert (r.status_code, r.json()["error"]) == (401, "X-API-Key: missing"), path


def raw_get(client: TestClient, path: str, key: bytes) -> tuple[int, dict[str, Any]]:
    """A GET through the service's ASGI app with the key header's bytes as sent on the wire
    (the test client would re-encode them as UTF-8)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"x-api-key", key)],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    client.portal.call(client.app, scope, receive, send)
    if not sent:  # the app failed before answering: the server answers 500
        return 500, {}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body) if body.strip() else {}


NOT_UTF8 = b"\xff\xfe-key"


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/profile/c1", 401, {"error": "X-API-Key: not UTF-8", "field": "X-API-Key"}),
        ("/metrics", 401, {"error": "X-API-Key: not UTF-8", "field": "X-API-Key"}),
        ("/healthz", 200, None),  # the public view
        ("/livez", 200, {}),
    ],
)
def test_key_that_is_not_utf8_is_a_401_not_a_500(
    client: TestClient, path: str, status: int, body: dict | None
) -> None:
    got_status, got = raw_get(client, path, NOT_UTF8)
    assert got_status == status
    if body is not None:
        assert got == body
    else:
        assert set(got) == {"status", "parts"}


def test_healthz_says_which_parts_are_down_but_not_why_without_the_admin_key(
    client: TestClient,
) -> None:
    """The session's service has no promoted model: its reason (and any exception text a part
    failed with) is for the admin only."""
    full = client.get("/healthz", headers=ADMIN).json()
    assert full["parts"]["models"] == "nothing promoted yet" and "model_versions" in full
    for headers in ({}, CHANNEL, {"X-API-Key": "guess"}):
        public = client.get("/healthz", headers=headers).json()
        assert public == {
            "status": full["status"],
            "parts": {p: "ok" if v == "ok" else "unavailable" for p, v in full["parts"].items()},
        }


@pytest.mark.slow
def test_every_route_of_a_real_server_answers_as_the_table_says(
    client: TestClient, tmp_path: Path
) -> None:
    """The same walk against ``bentoml serve``: the routes are the in-process app's, which
    the first test holds equal to the table."""
    routes = list(app_routes(client.app))
    with (
        run.served(Settings(home=tmp_path), log=tmp_path / "server.log") as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        wrong = walk(http.request, routes)
        not_utf8 = http.get("/decide", headers={"X-API-Key": NOT_UTF8})
    assert (not_utf8.status_code, not_utf8.json()["error"]) == (401, "X-API-Key: not UTF-8")
    assert wrong == [], (tmp_path / "server.log").read_text()[-2000:]


def test_a_websocket_without_a_key_is_refused_before_its_handshake(client: TestClient) -> None:
    """Default deny covers websockets too (the service has none today)."""
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/decide"):
        pass
    assert refused.value.code == 1008
