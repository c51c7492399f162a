"""The online learner as a process of its own: ``python -m serving.learner_process``.

It does what each worker's learning thread used to (``serving.learner``: adopt a newly
promoted bandit, learn the decisions whose reward wait has passed, from the ledger), so no
worker that answers visits gives its GIL to VW updates. Every ``learner_publish_seconds``
with something learned, or at once after ``learner_publish_updates`` updates or an adoption,
it publishes the policy (``serving.learner_files``); workers swap it in. A heartbeat every
second says it is alive.

One learner per home: it holds an exclusive ``flock`` on ``<home>/learner/learner.lock``
(released by the kernel when it dies, so a restart takes it over); a second one exits with
code 3. A restarted learner resumes from the published policy and its watermark when that
grew from the bandit still promoted, so published versions never go backwards.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime
from typing import IO, Any, Literal

from nextbest.settings import Settings, get_settings
from record.tables import now as wall_clock
from serving import learner_files as files
from serving.deps import Deps, load_deps
from serving.learner import Learner, adopt_promoted, learn_matured, policy_of, start_for
from training.bandit_registry import policy_meta

log = logging.getLogger("nextbest.learner_process")
HEARTBEAT_SECONDS = 1.0
BUSY = 3  # exit code: another learner holds the lock


class LearnerBusy(RuntimeError):
    """Another learner process holds this home's lock."""


def hold_lock(settings: Settings) -> IO[bytes]:
    """The home's learner lock, held until the returned file is closed or the process dies."""
    path = files.lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+b")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        beat = files.read_heartbeat(settings)
        holder = f" (pid {beat.pid})" if beat else ""
        raise LearnerBusy(f"another learner holds {path}{holder}") from None
    return handle


class LearnerProcess:
    """The learning loop: a ``Deps`` with the ledger, catalogue and bandit, the ``Learner``
    watermark, and what was last published."""

    def __init__(self, settings: Settings, deps: Deps | None = None) -> None:
        self.settings = settings
        # features, models, identity graph and ingest are the workers': learning needs none
        self.deps = deps or load_deps(settings, graph=None, features=None, models=None, ingest=None)
        self.started_at = wall_clock()
        self.last_error: str | None = None
        published = files.read_manifest(settings)
        self.seq = published.seq if published else 0
        self.published: str | None = None  # the version last published by this process
        self.published_base: str | None = None
        self.published_updates = 0
        self.published_at = time.monotonic()
        self.deps.learner = self._resume(published) or Learner(start=start_for(self.deps))

    def _resume(self, published: files.Manifest | None) -> Learner | None:
        """Start from the published policy and watermark when it grew from the bandit still
        promoted (the one ``load_deps`` loaded); else None: learn again from the champion."""
        current = policy_of(self.deps.bandit)
        if published is None or current is None or published.base_version != current.base_version:
            return None
        try:
            self.deps.bandit = files.load_published(self.settings, published)
        except (OSError, ValueError) as exc:
            log.warning("not resuming from %s: %s", published.version, exc)
            return None
        state = Learner(start=published.trained_through)
        state.ids = set(published.watermark_ids)
        self.published, self.published_base = published.version, published.base_version
        self.published_updates = published.updates
        log.info("resumed from published %s", published.version)
        return state

    def tick(self, now: datetime) -> str | None:
        """Adopt a newly promoted bandit, learn what matured; a line worth logging, if any."""
        adopted = adopt_promoted(self.deps)
        n = learn_matured(self.deps, now)
        done = [f"adopted the promoted {adopted}"] if adopted else []
        done += [f"learned {n} matured decisions"] if n else []
        return "; ".join(done) or None

    def pending(self) -> int:
        """Updates learned since the last publish; a policy never published (just loaded or
        adopted) counts its updates plus one, so it is published too."""
        policy = policy_of(self.deps.bandit)
        if policy is None:
            return 0
        if policy.base_version != self.published_base:
            return policy.updates + 1
        return policy.updates - self.published_updates

    def due(self) -> bool:
        """Publish now: something to publish, and a new base model, enough updates waiting,
        or ``learner_publish_seconds`` since the last publish."""
        pending = self.pending()
        if pending <= 0:
            return False
        policy = policy_of(self.deps.bandit)
        return (
            policy.base_version != self.published_base
            or pending >= self.settings.learner_publish_updates
            or time.monotonic() - self.published_at >= self.settings.learner_publish_seconds
        )

    def publish(self) -> files.Manifest | None:
        """Write the policy and its manifest for the workers (under the learner's lock: never
        between two updates of a tick)."""
        policy = policy_of(self.deps.bandit)
        state: Learner = self.deps.learner
        if policy is None:
            return None
        with state._lock:
            self.seq += 1
            manifest = files.publish(
                self.settings,
                policy,
                files.Manifest(
                    seq=self.seq, version=policy.version, base_version=policy.base_version,
                    updates=policy.updates, trained_through=state.ts,
                    watermark_ids=sorted(state.ids), published_at=wall_clock(), model="",
                    meta=policy_meta(policy),
                ),
            )  # fmt: skip
        self.published, self.published_base = manifest.version, manifest.base_version
        self.published_updates = manifest.updates
        self.published_at = time.monotonic()
        log.info("published %s (seq %d)", manifest.version, manifest.seq)
        return manifest

    def beat(self, status: Literal["running", "stopped"] = "running") -> None:
        state: Learner = self.deps.learner
        files.write_heartbeat(
            self.settings,
            files.Heartbeat(
                pid=os.getpid(), status=status, at=wall_clock(), started_at=self.started_at,
                learner=state.state(), published=self.published,
                pending_updates=max(self.pending(), 0), last_error=self.last_error,
            ),
        )  # fmt: skip

    def run(self, stop: threading.Event, parent: int | None = None) -> None:
        """Learn every ``bandit_learn_every_seconds``, publish when due, beat every second,
        until ``stop`` is set (or the ``parent`` process, its supervisor, is gone); then
        publish what is pending and beat "stopped"."""
        every = self.settings.bandit_learn_every_seconds
        next_learn = time.monotonic()
        while not stop.is_set():
            if parent is not None and os.getppid() != parent:
                log.warning("supervisor %d gone: stopping", parent)
                break
            if time.monotonic() >= next_learn:
                next_learn = time.monotonic() + every
                self._step(lambda: self.tick(self.deps.clock()))
            if self.due():
                self._step(self.publish)
            self.beat()
            stop.wait(max(0.0, min(HEARTBEAT_SECONDS, next_learn - time.monotonic())))
        if self.pending() > 0:
            self._step(self.publish)
        self.beat("stopped")

    def _step(self, job: Any) -> None:
        """One job; a failure is logged and kept for the heartbeat, the next round retries."""
        try:
            done = job()
        except Exception as exc:  # noqa: BLE001 - e.g. the ledger away: retried next round
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.exception("learner step failed")
            return
        self.last_error = None
        if isinstance(done, str):
            log.info("bandit %s", done)


def main(argv: list[str] | None = None) -> int:
    """Hold the lock, learn until SIGTERM/SIGINT; exit 3 when another learner runs."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m serving.learner_process")
    parser.add_argument("--parent", type=int, help="stop when this process (a supervisor) ends")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s learner %(message)s")
    settings = get_settings().ensure_dirs()
    try:
        lock = hold_lock(settings)
    except LearnerBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BUSY
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        LearnerProcess(settings).run(stop, args.parent)
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
