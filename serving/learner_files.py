"""What the learner process and the serving workers share, as files under ``<home>/learner``.

The learner (``serving.learner_process``) publishes its policy as a VW model file plus a small
JSON manifest naming it; workers read the manifest (``serving.policy_follow``) and swap the
model in. Each file is written to a temporary name and renamed, so a reader sees the old file
or the new one, never half of one; a model file is never overwritten (each publish gets its
own ``policy-<seq>.vw``, the manifest written after it), so the manifest always names a
complete model. The heartbeat says whether the learner runs, when it last did something, and
its last error; ``nextbest serve``'s supervisor notes a death there at once.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from nextbest.settings import Settings
from record.tables import utc
from training.bandit import BanditPolicy
from training.bandit_registry import FORMAT_VERSION, cold_start_options

M = TypeVar("M", bound=BaseModel)
KEEP_MODELS = 3  # published model files kept: a worker may still be loading the one before


class Manifest(BaseModel):
    """One published policy: enough to load it and to resume learning on top of it."""

    seq: int  # increases with every publish; workers swap when it changes
    version: str  # as decisions record it, e.g. ``bandit:3+120``
    base_version: str  # the promoted model it grew from
    updates: int  # online updates on top of ``base_version``
    trained_through: datetime  # the learner's watermark: decisions up to here are learned
    watermark_ids: list[str]  # decisions exactly at ``trained_through`` already learned
    published_at: datetime
    model: str  # the VW model's file name in the learner folder
    meta: dict[str, Any]  # example format, actions, exploration, reward scale, cold offers


class Heartbeat(BaseModel):
    """The learner's liveness and counters (the ``Learner`` state), rewritten every second."""

    pid: int
    status: Literal["running", "stopped", "dead"]
    at: datetime
    started_at: datetime
    learner: dict[str, Any] = {}
    published: str | None = None  # the version last published
    pending_updates: int = 0  # learned but not yet published
    last_error: str | None = None


def folder(settings: Settings) -> Path:
    return settings.home / "learner"


def manifest_path(settings: Settings) -> Path:
    return folder(settings) / "manifest.json"


def heartbeat_path(settings: Settings) -> Path:
    return folder(settings) / "heartbeat.json"


def lock_path(settings: Settings) -> Path:
    return folder(settings) / "learner.lock"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_manifest(settings: Settings) -> Manifest | None:
    """The published manifest, or None when nothing was published (or it cannot be read)."""
    return _read(manifest_path(settings), Manifest)


def read_heartbeat(settings: Settings) -> Heartbeat | None:
    return _read(heartbeat_path(settings), Heartbeat)


def _read(path: Path, model: type[M]) -> M | None:
    try:
        return model.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):  # absent, or left by an older release: not published
        return None


def write_heartbeat(settings: Settings, beat: Heartbeat) -> None:
    write_atomic(heartbeat_path(settings), beat.model_dump_json().encode())


def publish(settings: Settings, policy: BanditPolicy, manifest: Manifest) -> Manifest:
    """Save ``policy`` as ``policy-<seq>.vw``, then the manifest naming it; drop model files
    older than the last ``KEEP_MODELS``."""
    base = folder(settings)
    name = f"policy-{manifest.seq}.vw"
    tmp = base / f".{name}.tmp"
    policy.save(tmp)
    os.replace(tmp, base / name)
    manifest = manifest.model_copy(update={"model": name})
    write_atomic(manifest_path(settings), manifest.model_dump_json().encode())
    for old in sorted(base.glob("policy-*.vw"), key=_seq)[:-KEEP_MODELS]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    return manifest


def _seq(path: Path) -> int:
    try:
        return int(path.stem.removeprefix("policy-"))
    except ValueError:
        return -1


def load_published(settings: Settings, manifest: Manifest) -> BanditPolicy:
    """The published policy, with the version and watermark time the learner had. Raises
    ``ValueError`` for a model of another example format, ``OSError`` when its file is gone."""
    meta = manifest.meta
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"published {manifest.version}: example format {meta.get('format')}, this code "
            f"reads format {FORMAT_VERSION}"
        )
    path = folder(settings) / manifest.model
    if not path.is_file():
        raise FileNotFoundError(f"published model {path} is gone (a newer one replaced it)")
    policy = BanditPolicy(
        meta["actions"],
        version=manifest.base_version,
        model_path=path,
        exploration=meta["exploration"],
        reward_scale=meta["reward_scale"],
        seed=settings.seed,
        cold=meta.get("cold"),
        **cold_start_options(settings),
    )
    policy.updates = manifest.updates
    policy.trained_through = utc(manifest.trained_through)
    return policy


def learner_health(settings: Settings, now: datetime) -> tuple[str | None, dict[str, Any]]:
    """Why the learner counts as failing (None when it runs, or was never started on this
    home), and its state for ``/healthz``: status, heartbeat age, last error, counters."""
    beat = read_heartbeat(settings)
    if beat is None:
        note = "off: no learner process on this home (nextbest serve starts one)"
        return None, {"status": "off", "note": note}
    age = round((utc(now) - utc(beat.at)).total_seconds(), 3)
    view = {**beat.model_dump(mode="json"), "heartbeat_age_s": age}
    if beat.status == "stopped":
        return None, {**view, "note": "stopped: learning is off until a learner starts"}
    if beat.status == "dead":
        return f"learner process dead: {beat.last_error}", view
    if age > settings.learner_stale_seconds:
        why = f"learner process silent for {age:.0f} s (pid {beat.pid})"
        return why + (f"; last error: {beat.last_error}" if beat.last_error else ""), view
    return None, view


def note_death(settings: Settings, pid: int, why: str, at: datetime) -> bool:
    """Mark the heartbeat of learner ``pid`` dead with ``why`` (its supervisor saw it exit),
    so ``/healthz`` says so at once instead of after ``learner_stale_seconds``. A heartbeat
    of another, live learner is left alone; False then."""
    beat = read_heartbeat(settings)
    if beat is not None and beat.pid != pid and beat.status == "running":
        return False
    started = beat.started_at if beat is not None and beat.pid == pid else at
    dead = Heartbeat(pid=pid, status="dead", at=at, started_at=started, last_error=why)
    if beat is not None and beat.pid == pid:
        # its last beat's time stays: /healthz shows how long ago it was last alive
        dead = beat.model_copy(update={"status": "dead", "last_error": why})
    write_heartbeat(settings, dead)
    return True
