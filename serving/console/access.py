"""Who is using the console: a key exchanged for a signed session cookie, roles, CSRF tokens.

A person signs in once with a console key (``settings.console_keys``, ``user:role:key``; an
admin key signs in as ``admin``) and gets a cookie (HttpOnly, SameSite=Strict) holding their
name, role, expiry and a CSRF token, signed with HMAC-SHA256 under ``console_secret``. The
cookie is stateless, so every worker accepts it; the key itself never leaves the sign-in
form. Every form and every script's POST carries the CSRF token, compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Literal

from pydantic import BaseModel

from nextbest.settings import Settings

COOKIE = "nextbest_console"
Role = Literal["agent", "clerk", "marketer", "admin"]
# what each role may open: agents and clerks the customers, marketers the rest, admins all
CUSTOMER_ROLES: tuple[Role, ...] = ("agent", "clerk", "admin")
MARKETER_ROLES: tuple[Role, ...] = ("marketer", "admin")
CHANNEL_OF = {"agent": "call_centre", "clerk": "store", "admin": "call_centre"}
access_log = logging.getLogger("nextbest.console.access")


def _to_stderr(logger: logging.Logger) -> None:
    """The access log on the server's output whoever configured logging (BentoML configures
    its own loggers only)."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [INFO] [console] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


_to_stderr(access_log)


class ConsoleUser(BaseModel):
    user: str
    role: Role
    expires: float
    csrf: str

    @property
    def channel(self) -> str:
        """The channel the console's decisions and events are logged under for this person."""
        return CHANNEL_OF.get(self.role, "call_centre")

    def may(self, roles: tuple[Role, ...]) -> bool:
        return self.role in roles


def user_of_key(key: str, settings: Settings) -> tuple[str, Role] | None:
    """The (user, role) a key signs in as, or None; constant-time comparisons."""
    given = key.encode()
    found = None
    for k in settings.admin_keys:
        if hmac.compare_digest(given, k.encode()):
            found = found or ("admin", "admin")
    for entry in settings.console_keys:
        user, role, k = entry.split(":", 2)
        if hmac.compare_digest(given, k.encode()):
            found = found or (user, role)
    return found  # type: ignore[return-value]


def _sign(payload: bytes, settings: Settings) -> str:
    mac = hmac.new(settings.console_secret.encode(), payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def new_session(user: str, role: Role, settings: Settings) -> tuple[ConsoleUser, str]:
    """A fresh session (new CSRF token) and its cookie value."""
    who = ConsoleUser(user=user, role=role, csrf=secrets.token_urlsafe(24),
                      expires=time.time() + settings.console_session_minutes * 60)  # fmt: skip
    payload = base64.urlsafe_b64encode(who.model_dump_json().encode())
    return who, f"{payload.decode()}.{_sign(payload, settings)}"


def session_of(cookie: str | None, settings: Settings) -> ConsoleUser | None:
    """The signed-in person of a cookie, or None when absent, forged or expired."""
    if not cookie or "." not in cookie:
        return None
    payload, mac = cookie.rsplit(".", 1)
    if not hmac.compare_digest(mac.encode(), _sign(payload.encode(), settings).encode()):
        return None
    try:
        who = ConsoleUser.model_validate(json.loads(base64.urlsafe_b64decode(payload)))
    except (ValueError, TypeError):
        return None
    return who if who.expires > time.time() else None


def csrf_ok(who: ConsoleUser, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(who.csrf.encode(), str(token).encode())


def log_access(who: ConsoleUser | None, method: str, page: str, status: int) -> None:
    """One line per page or action: who, what, the answer. Pages carry customer ids at most,
    never an identifier searched for (searches are POSTs, their bodies are not logged)."""
    name = f"{who.user}({who.role})" if who else "-"
    access_log.info("console %s %s %s -> %d", name, method, page, status)
