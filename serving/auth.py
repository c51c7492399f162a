"""API keys, readable body errors and one log line per bad request, as one ASGI middleware.

Default deny: every path needs a key unless it is one of the ``PUBLIC_PATHS`` probes, so a
route BentoML adds in a later version is closed until someone opens it here. Channel keys may
decide, send outcomes and events, read profiles, the outbox, the reports and the OpenAPI
document (channels code against it); only admin keys may erase, promote and read the metrics
(operators' data; channel keys sit in many client apps). ``/healthz`` answers anyone, with the
reasons, versions and learner state for admin keys only.

After the key, the body: every route that takes one takes a JSON object, so a POST to one
of them (``JSON_PATHS``) is read here (at most ``max_body_bytes``, counted as it streams: 413
past it) and refused before BentoML parses it when its content type is not JSON (415) or it
is not UTF-8 JSON of at most ``MAX_DEPTH`` levels (400). BentoML answered those with a 500
(its JSON parse raises outside its validation) and accepted text/plain and form bodies as
JSON. BentoML answers a malformed field with ``"1 validation error for Input"``; this
rewrites that 400 so its ``error`` names the field and the reason, and answers a 404 or 405
of the router (text) in the same JSON shape. Every 400, 413 and 415 is logged here as one
WARNING line with the path and the field (``serving.bentofix`` drops BentoML's own
traceback for them).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from serving.deps import health_summary

Scope = dict[str, Any]
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/healthz"})  # exact paths: probes
# prefixes; any other path takes any key
# the console's pages check their own session cookie, role and CSRF token (serving.console)
CONSOLE = "/console"
ADMIN_PATHS = ("/erase", "/promote/", "/metrics", "/reports/refresh")
# the POST routes that take a JSON object (exact, or a prefix ending in "/"); /promote/ takes
# no body, and a POST anywhere else is a 404 or 405 from the router, not a body problem
JSON_PATHS = ("/decide", "/decide/batch", "/outcome", "/events", "/erase", "/journeys/")
JSON = "application/json"
MAX_DEPTH = 32  # the deepest request (an event's items) is 3 levels; json.loads recurses in C
HEADER = b"x-api-key"
BAD_REQUEST = frozenset({400, 413, 415})  # logged as one line: the caller's fault, not ours
log = logging.getLogger("nextbest.edge")


def role_of(key: str | None, channel_keys: Iterable[str], admin_keys: Iterable[str]) -> str | None:
    """``admin``, ``channel`` or None; constant-time comparisons so keys cannot be timed out."""
    if not key:
        return None
    if any(hmac.compare_digest(key.encode(), k.encode()) for k in admin_keys):
        return "admin"
    if any(hmac.compare_digest(key.encode(), k.encode()) for k in channel_keys):
        return "channel"
    return None


def clear_validation_error(body: dict[str, Any]) -> dict[str, Any]:
    """``{"error": "channel: Input should be 'web', ...", "field": "channel", "detail": [...]}``."""
    detail = body.get("detail")
    if not isinstance(detail, list) or not detail or not isinstance(detail[0], dict):
        return body
    first = detail[0]
    field = field_path(first.get("loc", ())) or "body"
    msg = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    elif first.get("type") == "missing":
        msg = "required"
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    return {"error": f"{field}: {msg}{more}", "field": field, "detail": detail}


def field_path(loc: Iterable[Any]) -> str:
    """A validation error's location as a caller writes it: ``requests[3].channel``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


class BadBody(Exception):
    """A request body refused at the edge: its status and the error naming the problem."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.status, self.field = status, field


def media_type(scope: Scope) -> str | None:
    """The request's media type without parameters (``application/json``), None if unsent."""
    raw = next((v for k, v in scope["headers"] if k == b"content-type"), None)
    if raw is None:
        return None
    return raw.decode("latin-1").split(";", 1)[0].strip().lower()


def _depth(value: Any, limit: int) -> int:
    """How deep ``value`` nests, counted up to ``limit + 1`` (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def check_json(body: bytes) -> None:
    """Raise ``BadBody`` (400) unless ``body`` is UTF-8 JSON nested at most ``MAX_DEPTH`` deep:
    the problems BentoML's parser turns into 500s (RFC 8259: JSON on the wire is UTF-8 and has
    no NaN or Infinity)."""
    if not body.strip():
        raise BadBody(400, "body", "empty; send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 (byte 0x{body[exc.start]:02x} at {exc.start})"
        raise BadBody(400, "body", reason) from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        reason = f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        raise BadBody(400, "body", reason) from None
    except ValueError as exc:  # NaN or Infinity
        raise BadBody(400, "body", f"not JSON ({exc})") from None
    except RecursionError:
        raise BadBody(400, "body", f"nested deeper than {MAX_DEPTH} levels") from None
    if _depth(value, MAX_DEPTH) > MAX_DEPTH:
        raise BadBody(400, "body", f"nested deeper than {MAX_DEPTH} levels")


async def read_body(scope: Scope, receive: Callable, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it passes ``limit`` bytes: by its declared
    Content-Length before reading, else counted as it streams."""
    declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadBody(413, "body", f"larger than {limit} bytes")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            raise BadBody(400, "body", "the client disconnected before sending it")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadBody(413, "body", f"larger than {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def takes_json(method: str, path: str) -> bool:
    """Whether this request's body must be a JSON object: a POST to a ``JSON_PATHS`` route."""
    if method != "POST":
        return False
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in JSON_PATHS)


async def _json(
    send: Callable, status: int, body: dict[str, Any], keep: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer ``body`` as JSON; ``keep``: the original response's headers (an Allow header)
    besides its content type and length."""
    data = json.dumps(body).encode()
    headers = [(k, v) for k, v in keep if k not in (b"content-type", b"content-length")]
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def log_bad_request(scope: Scope, status: int, body: dict[str, Any]) -> None:
    """One WARNING line a bad request: method, path, status, the field and the reason."""
    log.warning(
        "bad request %s %s -> %d field=%s: %s",
        scope["method"],
        scope["path"],
        status,
        body.get("field", "-"),
        str(body.get("error", ""))[:300],
    )


class ApiGuard:
    """Keys first (before any body is read), then the body's size, type and JSON, then
    readable 400s; /healthz reports the parts."""

    def __init__(
        self,
        app: Callable,
        channel_keys: list[str],
        admin_keys: list[str],
        health: Callable[[], dict[str, Any]] | None = None,
        max_body_bytes: int = 65_536,
        body_limits: dict[str, int] | None = None,
    ) -> None:
        """``body_limits``: a larger limit for a path that takes many items (/decide/batch)."""
        self.app = app
        self.channel_keys, self.admin_keys, self.health = channel_keys, admin_keys, health
        self.max_body_bytes = max_body_bytes
        self.body_limits = body_limits or {}

    def _role(self, scope: Scope) -> tuple[str | None, str]:
        """The caller's role, or None and why (for the 401)."""
        raw = next((v for k, v in scope["headers"] if k == HEADER), None)
        if not raw:
            return None, "missing"
        try:
            key = raw.decode()
        except UnicodeDecodeError:  # no key anyone holds; a 500 before
            return None, "not UTF-8"
        return role_of(key, self.channel_keys, self.admin_keys), "unknown API key"

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        path = scope["path"]
        role, why = self._role(scope)
        if scope["type"] == "http" and path in PUBLIC_PATHS:
            if path == "/healthz" and self.health is not None:
                if scope["method"] not in ("GET", "HEAD"):
                    body = {"error": f"path: {path}: Method Not Allowed", "field": "path"}
                    return await _json(send, 405, body, [(b"allow", b"GET")])
                body = self.health()
                return await _json(send, 200, body if role == "admin" else health_summary(body))
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and (path == CONSOLE or path.startswith(CONSOLE + "/")):
            return await self.app(scope, receive, send)  # its session cookie (serving.console)
        if role is None or (path.startswith(ADMIN_PATHS) and role != "admin"):
            if scope["type"] != "http":  # a websocket: refused before its handshake
                return await send({"type": "websocket.close", "code": 1008})
            if role is None:
                return await _json(send, 401, {"error": f"X-API-Key: {why}", "field": "X-API-Key"})
            msg = f"X-API-Key: {path} needs an admin key"
            return await _json(send, 403, {"error": msg, "field": "X-API-Key"})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if takes_json(scope["method"], path):
            try:
                receive = await self._json_body(scope, receive)
            except BadBody as exc:
                body = {"error": str(exc), "field": exc.field}
                log_bad_request(scope, exc.status, body)
                return await _json(send, exc.status, body)
        return await self.app(scope, receive, _Rewriter(send, scope))

    async def _json_body(self, scope: Scope, receive: Callable) -> Callable:
        """The body read and checked (``BadBody`` if it is refused), replayed to the app."""
        kind = media_type(scope)
        if kind is not None and kind != JSON:
            raise BadBody(415, "Content-Type", f"must be {JSON}, got {kind or 'nothing'!r}")
        limit = self.body_limits.get(scope["path"], self.max_body_bytes)
        body = await read_body(scope, receive, limit)
        check_json(body)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:  # after the body: the disconnect, when it comes
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


class _Rewriter:
    """Passes responses through, except a 400 whose JSON body it rewrites and logs, and a 4xx
    that is not JSON (Starlette's ``Not Found``, ``Method Not Allowed``) which it answers in
    the error shape every other refusal has."""

    __slots__ = ("send", "scope", "start", "chunks")

    def __init__(self, send: Callable, scope: Scope) -> None:
        self.send, self.scope, self.start, self.chunks = send, scope, None, []

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.start is None and message["type"] == "http.response.start":
            status = message["status"]
            kind = dict(message.get("headers", ())).get(b"content-type", b"")
            if status != 400 and not (
                400 < status < 500 and not kind.startswith(b"application/json")
            ):
                self.start = False
                return await self.send(message)
            self.start = message
            return None
        if not self.start:
            return await self.send(message)
        self.chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return None
        status, raw = self.start["status"], b"".join(self.chunks)
        if status != 400:  # a route or method that does not exist: the path is the problem
            text = raw.decode(errors="replace").strip() or "refused"
            body = {"error": f"path: {self.scope['path']}: {text}", "field": "path"}
            return await _json(self.send, status, body, self.start.get("headers", ()))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict):
            body = clear_validation_error(body)
        else:
            body = {"error": raw.decode(errors="replace")}
        log_bad_request(self.scope, 400, body)
        await _json(self.send, 400, body)
