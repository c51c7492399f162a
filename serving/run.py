"""Start and stop ``bentoml serve`` for the service (used by ``nextbest serve``, the benchmark
and the real-server tests, so all three run the server the same way)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from nextbest.settings import PROJECT_ROOT, Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The child's environment: the same home and telemetry off."""
    env = dict(os.environ)
    env.update(
        NEXTBEST_HOME=str(settings.home),
        BENTOML_HOME=str(settings.bentoml_home),
        BENTOML_DO_NOT_TRACK="True",
        DO_NOT_TRACK="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONPATH=str(PROJECT_ROOT),
    )
    env.update(extra)
    return env


BENTOML = Path(sys.executable).with_name("bentoml")  # the CLI of the venv we run in


def server_cmd(target: str, port: int, host: str = "127.0.0.1") -> list[str]:
    return [
        str(BENTOML),
        "serve",
        target,
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(PROJECT_ROOT),
    ]


SERVE_COMMANDS = ("serve", "serve-http", "serve-grpc")


def bound_host(argv: list[str], environ: Mapping[str, str] = os.environ) -> str | None:
    """The address this process serves on when it is a ``bentoml serve`` (``nextbest serve``,
    a Bento run by hand): its --host, else BENTOML_HOST, else BentoML's default (0.0.0.0, every
    interface). None in any other process: a worker (its serve checked), a build, a test."""
    if not argv or not (Path(argv[0]).name == "bentoml" or argv[0].endswith("__main__.py")):
        return None
    command = next((a for a in argv[1:] if not a.startswith("-")), None)
    if command not in SERVE_COMMANDS:
        return None
    for i, arg in enumerate(argv):
        if arg == "--host" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--host="):
            return arg.removeprefix("--host=")
    if environ.get("BENTOML_HOST"):
        return environ["BENTOML_HOST"]
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return str(BentoMLContainer.http.host.get())
    except Exception:  # noqa: BLE001 - BentoML moved it: assume its documented default
        return "0.0.0.0"  # noqa: S104 - BentoML's own default, reported, not bound here


def start(
    settings: Settings,
    port: int,
    target: str = "serving.service:Nextbest",
    log: Path | None = None,
    **env: str,
) -> subprocess.Popen:
    """A server in its own process group (so a SIGKILL takes its workers too)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - lives with the child
    return subprocess.Popen(
        server_cmd(target, port, settings.host),
        env=server_env(settings, NEXTBEST_WORKERS=str(settings.workers), **env),
        cwd=PROJECT_ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 60.0) -> None:
    """Until /readyz answers 200; a child that dies first is an error with its exit code."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server on port {port} not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the server and every worker it started, and reap them. BentoML's workers run
    in sessions of their own, so a process-group kill would leave them holding the port."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(sig)
    _, alive = psutil.wait_procs(family, timeout=15)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=5)
    if proc.poll() is None:
        proc.wait(timeout=5)


@contextlib.contextmanager
def served(
    settings: Settings,
    target: str = "serving.service:Nextbest",
    log: Path | None = None,
    timeout: float = 120.0,
    learner: bool = False,
    **env: str,
) -> Iterator[str]:
    """A ready server on a free local port for the block (its base URL), stopped after it;
    ``learner``: with the supervised learner process beside it, as ``nextbest serve`` runs."""
    from serving.learner_supervisor import Supervisor

    port = free_port()
    proc = start(settings, port, target, log, **env)
    out = open(log, "ab") if log and learner else None  # noqa: SIM115 - closed below
    supervisor = Supervisor(settings, server_env(settings, **env), out).start() if learner else None
    try:
        wait_ready(proc, port, timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        if supervisor is not None:
            supervisor.stop()
        if out is not None:
            out.close()
        stop(proc)
