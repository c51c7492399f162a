"""API keys and clear errors at the HTTP edge, as one small ASGI middleware.

Default deny: every path needs a key unless it is one of the ``PUBLIC_PATHS`` probes, so a
route BentoML adds in a later version is closed until someone opens it here. Channel keys may
decide, send outcomes and events, read profiles, the outbox, the reports and the OpenAPI
document (channels code against it); only admin keys may erase, promote and read the metrics
(operators' data; channel keys sit in many client apps). ``/healthz`` answers anyone, with the
reasons, versions and learner state for admin keys only. BentoML answers a malformed body with
``"1 validation error for Input"``; this rewrites that 400 so its ``error`` names the field and
the reason.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any

from serving.deps import health_summary

Scope = dict[str, Any]
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/healthz"})  # exact paths: probes
# prefixes; any other path takes any key
ADMIN_PATHS = ("/erase", "/promote/", "/metrics", "/reports/refresh")
HEADER = b"x-api-key"


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
    field = ".".join(str(p) for p in first.get("loc", ())) or "body"
    msg = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    elif first.get("type") == "missing":
        msg = "required"
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    return {"error": f"{field}: {msg}{more}", "field": field, "detail": detail}


async def _json(send: Callable, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class ApiGuard:
    """Keys first (before any body is read), then readable 400s; /healthz reports the parts."""

    def __init__(
        self,
        app: Callable,
        channel_keys: list[str],
        admin_keys: list[str],
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.app = app
        self.channel_keys, self.admin_keys, self.health = channel_keys, admin_keys, health

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
                body = self.health()
                return await _json(send, 200, body if role == "admin" else health_summary(body))
            return await self.app(scope, receive, send)
        if role is None or (path.startswith(ADMIN_PATHS) and role != "admin"):
            if scope["type"] != "http":  # a websocket: refused before its handshake
                return await send({"type": "websocket.close", "code": 1008})
            if role is None:
                return await _json(send, 401, {"error": f"X-API-Key: {why}", "field": "X-API-Key"})
            msg = f"X-API-Key: {path} needs an admin key"
            return await _json(send, 403, {"error": msg, "field": "X-API-Key"})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        return await self.app(scope, receive, _Rewriter(send))


class _Rewriter:
    """Passes responses through, except a 400 whose JSON body it rewrites."""

    __slots__ = ("send", "start", "chunks")

    def __init__(self, send: Callable) -> None:
        self.send, self.start, self.chunks = send, None, []

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.start is None and message["type"] == "http.response.start":
            if message["status"] != 400:
                self.start = False
                return await self.send(message)
            self.start = message
            return None
        if not self.start:
            return await self.send(message)
        self.chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return None
        try:
            body = clear_validation_error(json.loads(b"".join(self.chunks)))
        except ValueError:
            body = {"error": b"".join(self.chunks).decode(errors="replace")}
        await _json(self.send, 400, body)
