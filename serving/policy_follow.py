"""A serving worker follows the learner process's published policy instead of learning itself.

Every second the worker stats the manifest (``serving.learner_files``); when its ``seq``
changed, the model is loaded in a thread (a VW load takes milliseconds the event loop should
not wait), then the reference is swapped on the loop under the old policy's lock. /decide plans
on the loop without awaiting in between, so a decision sees one policy from its first read
to its ledger row; a thread still holding the old policy finishes with it.

A manifest is followed when it grew from the bandit this worker serves, or from the one
promoted now (the learner adopted it first): a manifest left by a learner of an older
champion is not swapped in over a newer promotion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from serving import learner_files as files
from serving.learner import policy_of

log = logging.getLogger("nextbest.policy_follow")
FOLLOW_SECONDS = 1.0


class PolicyFollower:
    """This worker's view of the learner: what it swapped in, and the learner's health."""

    def __init__(self, deps: Any) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.seq: int | None = None  # the manifest swapped in last
        self.version: str | None = None
        self._seen: tuple[int, int] | None = None  # manifest (mtime_ns, size) last read
        self.last_error: str | None = None

    def changed(self) -> files.Manifest | None:
        """A manifest not handled yet; cheap when nothing changed (one ``stat``)."""
        try:
            st = files.manifest_path(self.settings).stat()
        except FileNotFoundError:
            return None
        if (st.st_mtime_ns, st.st_size) == self._seen:
            return None
        self._seen = (st.st_mtime_ns, st.st_size)
        manifest = files.read_manifest(self.settings)
        return manifest if manifest is not None and manifest.seq != self.seq else None

    def load(self, manifest: files.Manifest) -> Any:
        """The published policy when this worker should follow it, else None (in a thread)."""
        current = policy_of(self.deps.bandit)
        if current is None or manifest.base_version != current.base_version:
            from training.bandit_registry import promoted_version

            if manifest.base_version != promoted_version(self.settings):
                log.info(
                    "not following %s: grew from a bandit no longer promoted", manifest.version
                )
                return None
        return files.load_published(self.settings, manifest)

    def swap(self, policy: Any, manifest: files.Manifest) -> None:
        """Point the worker at ``policy`` (on the loop: between two decisions)."""
        old = policy_of(self.deps.bandit)
        lock = getattr(old, "_lock", None) or contextlib.nullcontext()
        with lock:
            self.deps.bandit = policy
        self.deps.missing.pop("bandit", None)
        self.seq, self.version = manifest.seq, manifest.version

    async def follow_once(self) -> str | None:
        manifest = self.changed()
        if manifest is None:
            return None
        try:
            policy = await asyncio.to_thread(self.load, manifest)
        except Exception as exc:  # noqa: BLE001 - the policy serving stays; next publish retries
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self._seen = None  # read it again next round (e.g. the file was being replaced)
            log.warning("published %s not loaded: %s", manifest.version, self.last_error)
            return None
        self.last_error = None
        if policy is None:
            return None
        self.swap(policy, manifest)
        return f"bandit now the published {manifest.version}"

    async def run(self) -> None:
        """Follow while the worker runs (cancelled on shutdown)."""
        while True:
            try:
                done = await self.follow_once()
            except Exception:  # noqa: BLE001 - e.g. the home unreadable a moment
                log.exception("following the learner failed")
            else:
                if done:
                    log.info("%s", done)
            await asyncio.sleep(FOLLOW_SECONDS)

    def problem(self) -> str | None:
        """Why the learner counts as failing (``/healthz`` degraded), or None."""
        return files.learner_health(self.settings, self.deps.clock())[0]

    def state(self) -> dict[str, Any]:
        """The learner's heartbeat (status, age, last error, counters) and what this worker
        follows."""
        _, view = files.learner_health(self.settings, self.deps.clock())
        return {**view, "following": self.version, "follow_error": self.last_error}
