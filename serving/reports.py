"""The marketers' report, built by a process of its own and served from the home.

Building reads the whole ledger (1-10 s of CPU): done on a decision worker, three clients
looping on ``/reports`` raised ``/decide`` p99 from 10 to 159 ms. So no worker builds one.
Each worker's background tick starts ``python -m serving.reports`` when the last build is
older than ``report_every_minutes`` (and an admin's ``POST /reports/refresh`` starts one at
once); that process takes a lock in the home (one build at a time, whichever worker started
it), lowers its priority, writes ``report.html`` and ``report.json`` of ``reports_dir`` by
atomic renames and records how the attempt went in ``build.json``. ``GET /reports`` only reads
the last files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nextbest.settings import PROJECT_ROOT, Settings, get_settings

FILES = {"html": "report.html", "json": "report.json"}
LOCK, STATUS = "build.lock", "build.json"
NICE = 10  # the build yields the CPU to decisions on the same machine
_BUILDERS: dict[Path, Builder] = {}  # a worker's build process handle, one per home it serves


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def build_lock(settings: Settings) -> Iterator[bool]:
    """The home's build lock, without waiting: True while this holds it, False when another
    process does. A build that dies drops it with its file descriptor."""
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.reports_dir / LOCK, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def building(settings: Settings) -> bool:
    """Whether a build is under way: one this worker started (it may not hold the lock yet),
    or any process holding the lock."""
    mine = _BUILDERS.get(settings.home)
    if mine is not None and mine.running():
        return True
    if not (settings.reports_dir / LOCK).exists():
        return False
    with build_lock(settings) as mine:
        return not mine


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_status(settings: Settings, status: dict[str, Any]) -> None:
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(settings.reports_dir / STATUS, json.dumps(status).encode())


def read_status(settings: Settings) -> dict[str, Any] | None:
    """The last build attempt (``started_at``, ``finished_at``, ``seconds``, ``error``, ``pid``),
    or None before the first."""
    try:
        return json.loads((settings.reports_dir / STATUS).read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def last_attempt(settings: Settings) -> float | None:
    """When the last build ended (failed or not); a report written by ``nextbest report``
    counts by its file's time."""
    times = []
    if (status := read_status(settings)) and status.get("finished_at"):
        times.append(float(status["finished_at"]))
    with contextlib.suppress(FileNotFoundError):
        times.append((settings.reports_dir / FILES["json"]).stat().st_mtime)
    return max(times, default=None)


def due(settings: Settings, now: float | None = None) -> bool:
    """A scheduled build is due: the schedule is on and the last attempt is older than it."""
    if settings.report_every_minutes <= 0:
        return False
    last = last_attempt(settings)
    now = time.time() if now is None else now
    return last is None or now - last >= settings.report_every_minutes * 60


def tick_seconds(settings: Settings) -> float:
    """How often a worker looks whether a build is due: a quarter of the schedule, 1-30 s."""
    return min(30.0, max(1.0, settings.report_every_minutes * 15))


def served(settings: Settings, fmt: str) -> tuple[bytes, str] | None:
    """The last built report in ``fmt`` and when it was built, or None."""
    path = settings.reports_dir / FILES[fmt]
    try:
        with open(path, "rb") as f:  # one open file: a rename meanwhile cannot tear it
            return f.read(), iso(os.fstat(f.fileno()).st_mtime)
    except FileNotFoundError:
        return None


class Builder:
    """A worker's handle on the build process it started (one at a time); starting one costs
    the worker a fork and exec, nothing of the build."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # the schedule's thread and a refresh may race

    def running(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            self.proc = None  # reaped
        return self.proc is not None

    def start(self) -> bool:
        """Start a build now; False when one is already under way (here or elsewhere)."""
        with self._lock:
            if building(self.settings):
                return False
            self.proc = self._spawn()
            return True

    def _spawn(self) -> subprocess.Popen:
        from serving.run import server_env

        return subprocess.Popen(  # noqa: S603 - our own module, by the venv's python
            [sys.executable, "-m", "serving.reports"],
            env=server_env(self.settings),
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # the outcome is in build.json
        )

    def tick(self) -> str | None:
        """The schedule: a build when one is due and none runs."""
        if due(self.settings) and self.start():
            return "report build started"
        return None

    def stop(self) -> None:
        """On shutdown: the build goes with the service."""
        if self.running():
            self.proc.terminate()


def builder_for(settings: Settings) -> Builder:
    return _BUILDERS.setdefault(settings.home, Builder(settings))


def build(settings: Settings) -> dict[str, Any]:
    """The build process's work: under the lock, the report into ``reports_dir``; the
    attempt recorded in ``build.json``. Another build running makes this a no-op."""
    from experiments.report_charts import write_report
    from experiments.report_units import ReportError

    with build_lock(settings) as mine:
        if not mine:
            return {"skipped": "another build is running"}
        with contextlib.suppress(OSError):
            os.nice(NICE)
        started = time.time()
        status: dict[str, Any] = {"pid": os.getpid(), "started_at": started, "error": None}
        with tempfile.TemporaryDirectory(dir=settings.reports_dir, prefix=".build-") as tmp:
            try:
                result = write_report(settings, Path(tmp))
            except ReportError as exc:
                status["error"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - recorded; the last report stays served
                status["error"] = f"build failed: {type(exc).__name__}: {exc}"[:300]
            else:
                for name in FILES.values():  # each file whole, old or new
                    os.replace(Path(tmp) / name, settings.reports_dir / name)
                status |= {"lines": result["lines"], "units": result["units"]}
        status |= {"finished_at": time.time(), "seconds": round(time.time() - started, 3)}
        write_status(settings, status)
        return status


def main() -> None:
    print(json.dumps(build(get_settings())))


if __name__ == "__main__":
    main()
