"""``nextbest serve``: the BentoML server in the foreground and one learner process beside it,
restarted when it dies.

Restart back-off: 1 s after the first death, doubling to at most 60 s, back to 1 s once a
learner has run for a minute; so a learner that crashes at once (the ledger away) retries
once a minute instead of spinning, and a rare crash costs a second of learning. While it is
down the workers decide with the last published policy, and the death is written to the
heartbeat at once (``/healthz`` degraded, naming the learner and why).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from types import FrameType

from nextbest.settings import PROJECT_ROOT, Settings
from record.tables import now
from serving import learner_files as files

log = logging.getLogger("nextbest.learner_supervisor")
FIRST_BACKOFF, MAX_BACKOFF, HEALTHY_RUN = 1.0, 60.0, 60.0
BUSY = 3  # serving.learner_process's exit code when another learner holds the lock


def learner_cmd(parent: int) -> list[str]:
    return [sys.executable, "-m", "serving.learner_process", "--parent", str(parent)]


def death(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exited with code {code}"


class Supervisor:
    """Keeps one learner process running until :meth:`stop`."""

    def __init__(self, settings: Settings, env: Mapping[str, str], out: int | None = None) -> None:
        self.settings = settings
        self.env = dict(env)
        self.out = out  # where the learner's output goes (None: this process's)
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="learner-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def _keep(self) -> None:
        import os

        delay = FIRST_BACKOFF
        while not self._stopping.is_set():
            began = time.monotonic()
            self.proc = subprocess.Popen(
                learner_cmd(os.getpid()), env=self.env, cwd=PROJECT_ROOT,
                stdout=self.out, stderr=subprocess.STDOUT if self.out else None,
                start_new_session=True,  # a Ctrl-C reaches the server; we stop the learner
            )  # fmt: skip
            code = self.proc.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - began >= HEALTHY_RUN:
                delay = FIRST_BACKOFF
            why = f"{death(code)}; restart {self.restarts + 1} in {delay:g} s"
            if code == BUSY:  # a standby: another learner runs on this home
                why = f"another learner holds the lock; retrying in {delay:g} s"
            else:
                files.note_death(self.settings, self.proc.pid, why, now())
            print(f"learner {self.proc.pid} {why}", file=sys.stderr, flush=True)
            self._stopping.wait(delay)
            delay = min(delay * 2, MAX_BACKOFF)
            self.restarts += 1

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the learner (it publishes what is pending and beats "stopped") and the loop."""
        self._stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._thread.join(timeout)


def serve_foreground(
    settings: Settings, cmd: list[str], env: Mapping[str, str], learner: bool = True
) -> int:
    """Run the server ``cmd`` until it exits (SIGTERM or SIGINT to this process is passed on to
    it) with a supervised learner beside it; the server's exit code."""
    server = subprocess.Popen(cmd, env=dict(env), cwd=PROJECT_ROOT)
    supervisor = Supervisor(settings, env).start() if learner else None

    def _forward(signum: int, frame: FrameType | None) -> None:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)  # a terminal's Ctrl-C reached it already too

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    try:
        return server.wait()
    finally:
        if supervisor is not None:
            supervisor.stop()
