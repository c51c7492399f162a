"""API keys and clear errors at the HTTP edge, as one small ASGI middleware.

Channel keys may decide, send outcomes and events, read profiles, the outbox and the reports;
only admin keys may erase and promote. BentoML answers a malformed body with
``"1 validation error for Input"``; this rewrites that 400 so its ``error`` names the field and
the reason.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any

Scope = dict[str, Any]
ADMIN_PATHS = ("/erase", "/promote/")
KEYED_PATHS = ("/decide", "/outcome", "/events", "/profile/", "/outbox", "/reports", *ADMIN_PATHS)
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

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/healthz" and self.health is not None:
            return await _json(send, 200, self.health())
        if not path.startswith(KEYED_PATHS):
            return await self.app(scope, receive, send)
        key = next((v.decode() for k, v in scope["headers"] if k == HEADER), None)
        role = role_of(key, self.channel_keys, self.admin_keys)
        if role is None:
            why = "missing" if not key else "unknown API key"
            return await _json(send, 401, {"error": f"X-API-Key: {why}", "field": "X-API-Key"})
        if path.startswith(ADMIN_PATHS) and role != "admin":
            msg = f"X-API-Key: {path} needs an admin key"
            return await _json(send, 403, {"error": msg, "field": "X-API-Key"})
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
