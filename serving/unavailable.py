"""A part that cannot complete a request answers 503, with the body of the service's 400s.

BentoML answers an exception raised in an API with a 500 (or, for its own
``ServiceUnavailable``, a 503 whose body hides the message), so an API that meets a failing
part returns this response instead: ``{"error": "<part>: <reason>", "field": "<part>"}``.
``ledger_guard`` does it for the ledger (SQLite or PostgreSQL, with the identity graph in the
same database): a full disk, a lost connection, an exhausted pool. Nothing is acknowledged
then, and everything acknowledged before stays committed, so the caller may retry.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from starlette.responses import JSONResponse

from record.ledger import LedgerError, RowRejected
from serving.auth import clear_validation_error
from serving.schemas import field_error

log = logging.getLogger("nextbest.service")

# The ledger's failures: the database's (operational, integrity, data...) and a pool with no
# connection to give (all SQLAlchemyError), and the writer's own (a row refused alone, plans
# never settling).
LEDGER_ERRORS = (SQLAlchemyError, LedgerError)


class Refused(Exception):
    """An answer that is neither a 200 nor a 400, raised by the plain functions: its HTTP
    status and JSON body (``{"error": "<field>: <reason>", "field": ...}`` and what else the
    caller needs, e.g. the stored record of a 409)."""

    def __init__(self, status: int, field: str, reason: str, **extra: Any) -> None:
        super().__init__(f"{field}: {reason}")
        self.status = status
        self.body: dict[str, Any] = {"error": f"{field}: {reason}", "field": field, **extra}


def unavailable(part: str, reason: str) -> JSONResponse:
    """The 503 that names the part that failed and why."""
    return JSONResponse({"error": f"{part}: {reason}", "field": part}, status_code=503)


def describe(exc: BaseException) -> str:
    """One short line: the driver's exception and its message (no SQL, no parameters)."""
    if isinstance(exc, LedgerError):
        return str(exc).removeprefix("ledger: ")[:300]
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(orig).split(" (Background on this error", 1)[0].strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(orig).__name__}: {first}"[:300]


def ledger_guard(api: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap an API method ``(self, request, /)``: a ``Refused`` is answered with its status
    and body (BentoML would give a 503 a generic body), a ledger failure becomes a 503 naming
    the ledger; a row the ledger refused for a value of the request's own (a field of its model)
    becomes the 400 naming that field."""

    @functools.wraps(api)
    async def guarded(self: Any, request: Any, /) -> Any:
        try:
            return await api(self, request)
        except Refused as exc:
            return JSONResponse(exc.body, exc.status)
        except RowRejected as exc:
            if exc.field is not None and exc.field in getattr(type(request), "model_fields", {}):
                raise field_error(exc.field, exc.reason, None) from None
            log.error("/%s: ledger refused a row: %s", api.__name__, exc)
            return unavailable("ledger", describe(exc))
        except LEDGER_ERRORS as exc:
            log.error("/%s: ledger unavailable: %s", api.__name__, describe(exc))
            return unavailable("ledger", describe(exc))

    return guarded


def route_handlers() -> dict[type[BaseException], Callable[..., Awaitable[JSONResponse]]]:
    """``ledger_guard``'s answers for the Starlette routes (profile, journeys, outbox, reports,
    promotion), as their app's exception handlers: a ``Refused`` with its status and body, a
    ValidationError the 400 naming its field, a ledger failure a 503 naming the ledger."""

    async def refused(_request: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Refused)
        return JSONResponse(exc.body, exc.status)

    async def invalid(_request: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ValidationError)
        detail = exc.errors(include_url=False, include_context=False, include_input=False)
        return JSONResponse(clear_validation_error({"detail": detail}), 400)

    async def ledger(request: Any, exc: Exception) -> JSONResponse:
        route = getattr(request.scope.get("route"), "path", "?")  # the template: no customer id
        log.error("%s: ledger unavailable: %s", route, describe(exc))
        return unavailable("ledger", describe(exc))

    return {Refused: refused, ValidationError: invalid, **dict.fromkeys(LEDGER_ERRORS, ledger)}
