"""Which journeys are active, and the definition each running instance follows.

``active`` is the one place the rest of serving asks; it uses ``journeys.load`` (h-defs) once
that exists. An instance follows the version it entered on: the active definition when it is
that version, else the stored one (``journey_versions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Connection, select

from journeys.definition import Journey
from journeys.state import journey_versions
from serving.deps import Deps

_FILES: dict[str, tuple[tuple[tuple[str, int], ...], dict[str, Journey]]] = {}
_VERSIONS: dict[tuple[str, str], Journey] = {}


def active(settings: Any) -> dict[str, Journey]:
    """The active journeys by name: the journey files of ``settings.journeys_path`` (else
    ``<home>/journeys``), loaded again only when a file there changes (every event asks)."""
    folder = Path(getattr(settings, "journeys_path", None) or Path(settings.home) / "journeys")
    files = sorted(folder.glob("*.y*ml")) if folder.is_dir() else []
    stamp = tuple((str(f), f.stat().st_mtime_ns) for f in files)
    cached = _FILES.get(str(folder))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    loaded = {j.name: j for j in _load(settings, folder)}
    _FILES[str(folder)] = (stamp, loaded)
    return loaded


def _load(settings: Any, folder: Path) -> list[Journey]:
    """REPLACE with ``journeys.load.active_journeys`` (h-defs), which this uses once it is
    merged; until then the files are read here, checked by the model alone."""
    try:
        from journeys.load import active_journeys  # type: ignore[import-not-found]
    except ImportError:
        return [Journey.model_validate(yaml.safe_load(f.read_text()))
                for f in sorted(folder.glob("*.y*ml"))]  # fmt: skip
    return active_journeys(settings)


def definition(conn: Connection, name: str, version: str, deps: Deps) -> Journey | None:
    """The definition an instance runs: the active one if it is that version, else the stored
    version (running instances finish on theirs). Versions are content hashes: cached for good."""
    now_active = active(deps.settings).get(name)
    if now_active is not None and now_active.version == version:
        return now_active
    key = (name, version)
    if key not in _VERSIONS:
        q = select(journey_versions.c.definition).where(
            journey_versions.c.journey == name, journey_versions.c.version == version
        )
        stored = conn.execute(q).scalar_one_or_none()
        if stored is None:
            return now_active  # not recorded: the instance's journey as it is now
        _VERSIONS[key] = Journey.model_validate(stored)
    return _VERSIONS[key]


def journeys_with(deps: Deps, channels: tuple[str, ...]) -> list[Journey]:
    """Active journeys with a message step on one of ``channels`` (or best_channel among them)."""
    found = []
    for j in active(deps.settings).values():
        for s in j.steps:
            if getattr(s, "type", None) != "message":
                continue
            options = s.channels if s.channel == "best_channel" else [s.channel]
            if any(c in channels for c in options):
                found.append(j)
                break
    return found
