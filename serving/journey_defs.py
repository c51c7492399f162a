"""Which journeys are active, their stored versions, and the definition each running
instance follows.

``active`` is the one place the rest of serving asks (``journeys.load`` reads and checks the
files). Every version that customers entered is stored in ``journey_versions`` under its
content hash, so an instance finishes on the version it entered however the file changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, Engine, select

from journeys.definition import Journey
from journeys.load import active_journeys
from journeys.state import journey_versions
from nextbest.settings import Settings
from record.tables import insert_ignore, now
from serving.deps import Deps

_FILES: dict[str, tuple[tuple[tuple[str, int], ...], dict[str, Journey]]] = {}
_VERSIONS: dict[tuple[str, str], Journey] = {}  # (journey, version) -> definition, immutable
_SYNCED: set[tuple[int, str, str]] = set()  # (engine, journey, version) stored this process


def active(settings: Settings) -> dict[str, Journey]:
    """The active journeys by name: the journey files of ``settings.journeys_path``, loaded
    again only when a file there changes (every event asks)."""
    folder = settings.journeys_path
    files = sorted(folder.glob("*.y*ml")) if folder.is_dir() else []
    stamp = tuple((str(f), f.stat().st_mtime_ns) for f in files)
    cached = _FILES.get(str(folder))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    loaded = {j.name: j for j in active_journeys(settings)}
    _FILES[str(folder)] = (stamp, loaded)
    return loaded


def sync_versions(journeys: Iterable[Journey], engine: Engine) -> dict[str, str]:
    """Store each journey's definition under its version (a content hash): an edited journey
    is a new version, an unchanged one stores nothing. Returns journey -> version."""
    out: dict[str, str] = {}
    rows = []
    for j in journeys:
        out[j.name] = j.version
        if (id(engine), j.name, j.version) not in _SYNCED:
            rows.append(
                {
                    "journey": j.name,
                    "version": j.version,
                    "definition": j.model_dump(mode="json"),
                    "created_at": now(),
                }
            )
            _VERSIONS.setdefault((j.name, j.version), j)
    if rows:
        with engine.begin() as conn:
            conn.execute(insert_ignore(conn, journey_versions), rows)
        _SYNCED.update((id(engine), r["journey"], r["version"]) for r in rows)
    return out


def definition(conn: Engine | Connection, journey: str, version: str) -> Journey:
    """The definition an instance runs on: the version it entered (stored when it entered),
    read once per process."""
    key = (journey, version)
    if key not in _VERSIONS:
        q = select(journey_versions.c.definition).where(
            journey_versions.c.journey == journey, journey_versions.c.version == version
        )
        if isinstance(conn, Engine):
            with conn.connect() as c:
                stored = c.execute(q).scalar_one_or_none()
        else:
            stored = conn.execute(q).scalar_one_or_none()
        if stored is None:
            raise LookupError(f"journey {journey} version {version}: not in journey_versions")
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
