"""A circuit breaker for an external part of the decision path (online features, the ledger).

A store that is down or hung must cost each decision one fast fallback, not a wait: after
``failures`` failed calls in a row the circuit opens and calls are refused at once; after
``reset_seconds`` one call is let through as a probe (half-open), and its result closes the
circuit or opens it again. Thread-safe: the service reads in threads, and so do the sync
callers (``/profile``, the replay).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitOpen(RuntimeError):
    """Refused without trying: the part failed just now and is not retried yet."""


class Breaker:
    """closed -> open after ``failures`` failures in a row -> half-open (one probe) after
    ``reset_seconds`` -> closed on the probe's success, open again on its failure."""

    def __init__(
        self,
        name: str,
        failures: int = 3,
        reset_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.failures, self.reset_seconds, self.clock = (
            name,
            failures,
            reset_seconds,
            clock,
        )
        self._lock = threading.Lock()
        self._failed = 0  # failures in a row
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self._why = ""
        self.opened = 0  # times the circuit opened (for /healthz and tests)

    @property
    def state(self) -> str:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half-open" if self._probing or self.clock() >= self._open_until else "open"

    def failing(self) -> str | None:
        """Why calls are refused, while the circuit is not closed."""
        with self._lock:
            return None if self._open_until is None else self._why

    def admit(self) -> bool:
        """May a call go ahead? Raises :class:`CircuitOpen` when not; True when the call is
        the half-open probe (its caller may run it in the background), else False."""
        with self._lock:
            if self._open_until is None:
                return False
            if self._probing or self.clock() < self._open_until:
                raise CircuitOpen(f"{self.name} circuit open after {self._why}")
            self._probing = True
            return True

    def success(self) -> None:
        with self._lock:
            self._failed, self._open_until, self._probing, self._why = 0, None, False, ""

    def failure(self, exc: BaseException) -> None:
        with self._lock:
            self._failed += 1
            self._why = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:200]
            if self._probing or self._open_until is not None or self._failed >= self.failures:
                if self._open_until is None:
                    self.opened += 1
                self._open_until = self.clock() + self.reset_seconds
                self._probing = False
