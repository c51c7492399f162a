"""Who may call what (issue 12, item 14): every route of the service, walked with no key, a
channel key and an admin key, in process and on a real ``bentoml serve``.

The routes are read from the app itself, so a route BentoML adds in a later version fails
``test_access_table_lists_every_route`` until it is given a row (and is closed meanwhile:
``serving.auth`` lets nothing through without a key unless its path is public).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bentoml.exceptions import InvalidArgument, NotFound, ServiceUnavailable
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from nextbest.settings import Settings
from serving import run
from serving.auth import takes_json
from serving.bentofix import HTTP_APP_LOGGER, ClientErrorFilter
from serving.schemas import field_error
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
    ("GET", "/docs"): ("/docs", None, 401, 200, 200),  # the same document
    ("GET", "/schema.json"): ("/schema.json", None, 401, 200, 200),
    ("GET", "/"): ("/", None, 401, 200, 200),  # the Swagger UI page
    ("GET", "/static_content/{path}"): ("", None, 401, 200, 200),  # its scripts (path: below)
    ("POST", "/decide"): ("/decide", {}, 401, 400, 400),
    ("POST", "/decide/batch"): ("/decide/batch", {}, 401, 400, 400),
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
    # the console takes no API key: its session cookie (none here: the sign-in form, 401)
    ("GET", "/console"): ("/console", None, 401, 401, 401),
    ("GET", "/console/signin"): ("/console/signin", None, 200, 200, 200),
    ("POST", "/console/signin"): ("/console/signin", None, 403, 403, 403),  # no form token
    ("POST", "/console/signout"): ("/console/signout", None, 401, 401, 401),
    ("GET", "/console/search"): ("/console/search", None, 401, 401, 401),
    ("POST", "/console/search"): ("/console/search", None, 401, 401, 401),
    ("GET", "/console/customer/{customer_id}"): ("/console/customer/x", None, 401, 401, 401),
    ("GET", "/console/customer/{customer_id}/live"): (
        "/console/customer/x/live",
        None,
        401,
        401,
        401,
    ),  # noqa: E501
    ("POST", "/console/customer/{customer_id}/intent"): (
        "/console/customer/x/intent",
        None,
        401,
        401,
        401,
    ),  # noqa: E501
    ("POST", "/console/customer/{customer_id}/answer"): (
        "/console/customer/x/answer",
        None,
        401,
        401,
        401,
    ),  # noqa: E501
    ("POST", "/console/customer/{customer_id}/journey"): (
        "/console/customer/x/journey",
        None,
        401,
        401,
        401,
    ),  # noqa: E501
    ("POST", "/console/customer/{customer_id}/erase"): (
        "/console/customer/x/erase",
        None,
        401,
        401,
        401,
    ),  # noqa: E501
    ("GET", "/console/offers"): ("/console/offers", None, 401, 401, 401),
    ("GET", "/console/journeys"): ("/console/journeys", None, 401, 401, 401),
    ("GET", "/console/uplift"): ("/console/uplift", None, 401, 401, 401),
    ("GET", "/console/uplift/report"): ("/console/uplift/report", None, 401, 401, 401),
    ("GET", "/console/models"): ("/console/models", None, 401, 401, 401),
    ("POST", "/console/models/{model}/promote"): (
        "/console/models/churn/promote",
        None,
        401,
        401,
        401,
    ),  # noqa: E501
    ("GET", "/console/static/{path}"): ("", None, 200, 200, 200),  # its CSS and script
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


# Issue 15, item 5: malformed bodies get a 4xx naming the problem before BentoML parses them
# (it answered 500 for bad JSON, non-UTF-8, deep nesting and junk, and took text/plain and
# form bodies on /decide as JSON). (path, key, content type, body, status, error)
DEEP = b"[" * 100_000 + b"]" * 100_000  # 200 KB: over the size limit before any parse
NESTED = b'{"a":' * 40 + b"1" + b"}" * 40  # small, valid JSON, 40 levels deep
JUNK = bytes(random.Random(15).randrange(256) for _ in range(1_000_000))
MULTIPART = "multipart/form-data; boundary=XyZ"
FORM_BODY = b'--XyZ\r\nContent-Disposition: form-data; name="channel"\r\n\r\nweb\r\n--XyZ--\r\n'
TOO_BIG = "body: larger than 65536 bytes"
DEEPER = "body: nested deeper than 32 levels"
J = "application/json"


def not_json(kind: str) -> str:
    return f"Content-Type: must be application/json, got {kind!r}"


BAD_BODIES: list[tuple[str, dict[str, str], str | None, bytes, int, str]] = [
    ("/events", CHANNEL, J, b"{bad", 400, "body: not JSON (Expecting property name enclosed "
     "in double quotes at line 1 column 2)"),
    ("/events", CHANNEL, J, b'\xff\xfe{"a": 1}', 400, "body: not UTF-8 (byte 0xff at 0)"),
    ("/events", CHANNEL, J, b'{"a": "caf\xe9"}', 400, "body: not UTF-8 (byte 0xe9 at 10)"),
    ("/events", CHANNEL, J, DEEP, 413, TOO_BIG),
    ("/events", CHANNEL, J, NESTED, 400, DEEPER),
    ("/events", CHANNEL, J, JUNK, 413, TOO_BIG),
    ("/events", CHANNEL, None, b"\x80" + JUNK[:4999], 400, "body: not UTF-8 (byte 0x80 at 0)"),
    ("/decide", CHANNEL, J, b"", 400, "body: empty; send a JSON object"),
    ("/decide", CHANNEL, J, b'{"channel": "web", "max_offers": NaN}', 400,
     "body: not JSON (NaN is not a JSON value)"),
    ("/outcome", CHANNEL, J, b"[" * 5000, 400, DEEPER),
    ("/decide", CHANNEL, "text/plain", b'{"channel": "web"}', 415, not_json("text/plain")),
    ("/decide", CHANNEL, "application/x-www-form-urlencoded", b"channel=web", 415,
     not_json("application/x-www-form-urlencoded")),
    ("/decide", CHANNEL, MULTIPART, FORM_BODY, 415, not_json("multipart/form-data")),
    ("/outcome", CHANNEL, MULTIPART, FORM_BODY, 415, not_json("multipart/form-data")),
    ("/events", CHANNEL, MULTIPART, FORM_BODY, 415, not_json("multipart/form-data")),
    ("/erase", ADMIN, MULTIPART, FORM_BODY, 415, not_json("multipart/form-data")),
    ("/journeys/end", CHANNEL, "text/plain", b"{}", 415, not_json("text/plain")),
    ("/decide", CHANNEL, J, b"[]", 400, "body: Input should be an object"),
]  # fmt: skip


def post_raw(
    request: Any, path: str, headers: dict[str, str], kind: str | None, body: bytes
) -> Any:
    """A POST of ``body`` as bytes with the content type ``kind`` (None: no such header)."""
    sent = dict(headers) | ({"Content-Type": kind} if kind else {})
    return request("POST", path, content=body, headers=sent)


@pytest.mark.parametrize(
    ("path", "headers", "kind", "body", "status", "error"),
    BAD_BODIES,
    ids=[f"{p}-{s}-{e[:30]}" for p, _, _, _, s, e in BAD_BODIES],
)
def test_a_malformed_body_is_a_4xx_naming_the_problem(
    client: TestClient,
    path: str,
    headers: dict[str, str],
    kind: str | None,
    body: bytes,
    status: int,
    error: str,
) -> None:
    r = post_raw(client.request, path, headers, kind, body)
    assert (r.status_code, r.json()["error"]) == (status, error)
    assert r.json()["field"] == error.partition(":")[0]


def test_every_post_route_that_takes_a_body_has_it_checked(client: TestClient) -> None:
    """A POST route added later without a row in ``JSON_PATHS`` fails here; promotion and a
    report refresh take no body; the console's forms are checked by the console (size, CSRF
    token, each field)."""
    bodiless = ("/promote/{model}", "/reports/refresh")
    for method, route, path in app_routes(client.app):
        if method == "POST" and not route.startswith("/console/"):
            assert takes_json(method, path) == (route not in bodiless), route


@pytest.mark.parametrize(
    "kind", [None, "application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_bodies_pass_with_or_without_parameters(client: TestClient, kind: str | None) -> None:
    r = post_raw(client.request, "/decide", CHANNEL, kind, b'{"channel": "web"}')
    assert r.status_code == 200, r.text


def test_a_body_is_not_read_before_the_key_is_checked(client: TestClient) -> None:
    """No key: 401, whatever the body (reading 1 MB for a caller with no key would be a gift)."""
    r = post_raw(client.request, "/events", {}, "text/plain", JUNK)
    assert (r.status_code, r.json()["error"]) == (401, "X-API-Key: missing")


def test_a_streamed_body_is_refused_once_it_passes_the_limit(client: TestClient) -> None:
    """Chunked (no Content-Length): counted as it arrives (the real server's test sees it
    stop reading)."""

    def chunks() -> Iterator[bytes]:
        yield from (b" " * 16_384 for _ in range(10))

    r = client.post("/events", content=chunks(), headers=CHANNEL)
    assert (r.status_code, r.json()["error"]) == (413, TOO_BIG)


def test_a_bad_request_is_one_warning_line_naming_path_and_field(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15, item 10: one WARNING line per bad request, from the edge, with no traceback."""
    with caplog.at_level(logging.WARNING):
        client.post("/decide", json={"channel": "fax"}, headers=CHANNEL)
        post_raw(client.request, "/events", CHANNEL, J, b"{bad")
    lines = [(r.name, r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert lines == [
        (
            "nextbest.edge",
            "WARNING",
            "bad request POST /decide -> 400 field=channel: channel: Input should be 'web', "
            "'app', 'email', 'sms', 'call_centre', 'store' or 'paid_media'",
            None,
        ),
        (
            "nextbest.edge",
            "WARNING",
            "bad request POST /events -> 400 field=body: body: not JSON (Expecting property "
            "name enclosed in double quotes at line 1 column 2)",
            None,
        ),
    ]


def _record(exc: BaseException | None) -> logging.LogRecord:
    info = (type(exc), exc, None) if exc else None
    return logging.LogRecord(HTTP_APP_LOGGER, logging.ERROR, "x", 1, "Exception", (), info)


@pytest.mark.parametrize(
    ("exc", "kept"),
    [
        (field_error("channel", "unknown", "fax"), False),  # BentoML's 400
        (InvalidArgument("bad"), False),
        (NotFound("no such task"), False),
        (ServiceUnavailable("ledger: down"), True),  # a 503: a fault, with its traceback
        (RuntimeError("boom"), True),  # a 500
        (None, True),  # a record with no exception
    ],
)
def test_bentoml_keeps_tracebacks_for_faults_only(exc: BaseException | None, kept: bool) -> None:
    """BentoML logged every 400 at ERROR with a 2 KB traceback (``log_exception``)."""
    assert ClientErrorFilter().filter(_record(exc)) is kept


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        # a "/" in a path parameter makes no route: JSON like every refusal (was text/plain)
        ("POST", "/promote/a%2Fb", 404, "path: /promote/a/b: Not Found"),
        ("GET", "/no-such-route", 404, "path: /no-such-route: Not Found"),
        ("GET", "/decide", 405, "path: /decide: Method Not Allowed"),
        ("PUT", "/metrics", 405, "path: /metrics: Method Not Allowed"),  # was a 400 (body)
        ("POST", "/outbox", 405, "path: /outbox: Method Not Allowed"),
        ("TRACE", "/healthz", 405, "path: /healthz: Method Not Allowed"),  # was a 200
        # claimed the messages it meant to peek at
        ("GET", "/outbox?channel=email&peek=null", 400, "peek: must be true or false, got 'null'"),
    ],
)
def test_every_refusal_is_json_naming_the_problem(
    client: TestClient, method: str, path: str, status: int, error: str
) -> None:
    r = client.request(method, path, headers=ADMIN)
    assert (r.status_code, r.json()["error"]) == (status, error)
    assert r.headers["content-type"] == "application/json"
