"""Fixes for BentoML 1.4, shared by the service and the benchmark floor.

The TimeoutMiddleware starts a timer per request and never cancels it, so each request's
objects live for the whole timeout (60 s by default); the heap grows to ~1M objects and full
garbage collections pause for 0.2-0.8 s (measured: p99 of 0.3-0.7 s under load). Cancelling
the timer when the request ends removes that.

Its API wrapper logs every request that fails validation (a 400: the caller's mistake) at
ERROR with the full traceback, about 2 KB each (the issue's fuzz run wrote 20 MB in 7
minutes). ``serving.auth`` logs each bad request as one WARNING line with the path and the
field, so those records are dropped here; a real fault (any other exception: a 5xx) keeps
its traceback.

Its traffic metrics label each request with its raw path, so every distinct path (each
customer id read through ``/profile/{customer_id}``, each path a scanner tries) adds a
Prometheus series for the life of the worker: memory that grows with traffic, never levelling
off (issue 15). ``bounded_metric_labels`` labels by route instead, with a cap.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

HTTP_APP_LOGGER = "bentoml._internal.server.http_app"  # its ``log_exception``


def cancel_timeout_timers() -> None:
    """Patch BentoML's TimeoutMiddleware so the timer of a finished request is cancelled."""
    from bentoml._internal.server.http import traffic

    if getattr(traffic.TimeoutMiddleware, "_nextbest_patched", False):
        return

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                await traffic.JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"},
                    status_code=504,
                )(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    traffic.TimeoutMiddleware.__call__ = __call__
    traffic.TimeoutMiddleware._nextbest_patched = True


def is_client_error(exc: BaseException | None) -> bool:
    """Whether BentoML answers ``exc`` with a 4xx: a failed validation, or one of its own
    exceptions whose status is below 500."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    return isinstance(exc, BentoMLException) and int(exc.error_code) < 500


class ClientErrorFilter(logging.Filter):
    """Drops BentoML's ``Exception on <path>`` record when the exception is the caller's
    (``serving.auth`` has logged it as one line); every other record passes untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not is_client_error(exc)


def quiet_client_errors() -> None:
    """Attach ``ClientErrorFilter`` to the logger of BentoML's API exception handler, once."""
    logger = logging.getLogger(HTTP_APP_LOGGER)
    if not any(isinstance(f, ClientErrorFilter) for f in logger.filters):
        logger.addFilter(ClientErrorFilter())


REAL_PATH = "nextbest.real_path"


class MetricLabels:
    """The ``endpoint`` label of a path: a parameterised route's template, a ``known`` route's
    path, any other path itself for the first ``most`` seen, then ``other``: a bounded set of
    labels whatever comes in."""

    def __init__(
        self, templates: dict[str, str], known: tuple[str, ...] = (), most: int = 32
    ) -> None:
        self.templates, self.known, self.most = templates, frozenset(known), most
        self.seen: set[str] = set()

    def __call__(self, path: str) -> str:
        for prefix, template in self.templates.items():
            if path.startswith(prefix):
                return template
        if path in self.known or path in self.seen:
            return path
        if len(self.seen) < self.most:
            self.seen.add(path)
            return path
        return "other"


def bounded_metric_labels(labels: MetricLabels) -> None:
    """Patch BentoML's traffic-metrics middlewares to label a request with ``labels(path)``;
    the app behind them still gets the real path."""
    from bentoml._internal.server.http import instruments

    classes = (instruments.HTTPTrafficMetricsMiddleware, instruments.RunnerTrafficMetricsMiddleware)
    for cls in classes:
        if getattr(cls, "_nextbest_labels", None) is not None:
            cls._nextbest_labels = labels
            continue
        cls._nextbest_labels = labels
        original = cls.__call__

        async def __call__(self: Any, scope: Any, receive: Any, send: Any, _o: Any = original):
            path = scope.get("path", "")
            label = type(self)._nextbest_labels(path) if scope["type"] != "lifespan" else path
            if label == path:
                return await _o(self, scope, receive, send)
            if not getattr(self, "_nextbest_restores", False):
                inner = self.app

                async def restore(scope: Any, receive: Any, send: Any) -> None:
                    if REAL_PATH in scope:
                        scope = {**scope, "path": scope[REAL_PATH]}
                    await inner(scope, receive, send)

                self.app, self._nextbest_restores = restore, True
            return await _o(self, {**scope, "path": label, REAL_PATH: path}, receive, send)

        cls.__call__ = __call__
