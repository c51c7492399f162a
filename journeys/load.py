"""Reading journey files: every problem of a file at once, one line each, naming the file line,
the journey, the step and the field: ``x.yaml:31: journey j: steps[3] (opened).timeout: ...``.

A journey loads only when its shape (``journeys.definition``), its step graph and its
cross-checks against the catalogue (``journeys.validate``) all pass. Pydantic stops at a
model's first failing validator, so each top-level field is also validated on its own: the
graph and the cross-checks then run on whatever parsed, and a file with a bad duration still
hears about its unknown offer in the same run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from features.schema import CHANNELS, EVENT_TYPES
from journeys.definition import (
    NAME,
    ExitStep,
    Journey,
    Loc,
    Step,
    Trigger,
    graph_problems,
    journey_schema,
    where,
)
from journeys.validate import check_parts
from nextbest.settings import Settings, get_settings
from offers.catalog import Catalog, load_catalog

EXAMPLES = Path(__file__).resolve().parent / "examples"
SCHEMA_PATH = Path(__file__).resolve().parent / "journey.schema.json"  # schema_text(), committed
SUFFIXES = (".yaml", ".yml")
Problem = tuple[Loc, str]


class JourneyError(ValueError):
    """Invalid journey files; ``problems`` holds one ``file:line: journey: where: reason`` line
    per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads an unquoted ``21:00`` as the base-60 number 1260; a journey means a time."""


_Loader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _digit in "0123456789":
    _Loader.yaml_implicit_resolvers.setdefault(_digit, []).insert(
        0, ("tag:yaml.org,2002:str", re.compile(r"^\d{1,2}:\d{2}(:\d{2})?$"))
    )


def shipped_examples() -> Path:
    """The folder of the example journeys shipped with Nextbest."""
    return EXAMPLES


def schema_text() -> str:
    """The journey file's JSON Schema as written to ``journey.schema.json``."""
    return json.dumps(journey_schema(), indent=2, sort_keys=True) + "\n"


def parse_journey(text: str, source: str = "<string>", catalog: Catalog | None = None) -> Journey:
    """One journey from YAML text; raise ``JourneyError`` with every problem. ``catalog``:
    the offers to check against (default ``offers/offers.yaml``)."""
    journey, problems = check_text(text, source, catalog or load_catalog())
    if problems or journey is None:
        raise JourneyError(problems)
    return journey


def load_journey(path: str | Path, catalog: Catalog | None = None) -> Journey:
    """One journey file; raise ``JourneyError`` with every problem."""
    journeys, problems = check_paths([path], catalog)
    if problems:
        raise JourneyError(problems)
    return journeys[0]


def load_journeys(folder: str | Path, catalog: Catalog | None = None) -> list[Journey]:
    """The journeys of a folder (one per ``*.yaml`` / ``*.yml`` file, by file name); raise
    ``JourneyError`` with every problem of every file, repeated names included."""
    journeys, problems = check_paths([folder], catalog)
    if problems:
        raise JourneyError(problems)
    return journeys


def active_journeys(
    settings: Settings | None = None, catalog: Catalog | None = None
) -> list[Journey]:
    """The journeys in ``settings.journeys_path``; none when that folder does not exist."""
    folder = (settings or get_settings()).journeys_path
    return load_journeys(folder, catalog) if folder.is_dir() else []


def journey_files(path: str | Path) -> list[Path]:
    """A file as given, or a folder's journey files sorted by name."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file())
    return [p]


def check_paths(
    paths: Iterable[str | Path], catalog: Catalog | None = None
) -> tuple[list[Journey], list[str]]:
    """The valid journeys of files and folders, and one line per problem of the others; a
    journey name given by two files is a problem of the second."""
    catalog = catalog or load_catalog()
    journeys: list[Journey] = []
    problems: list[str] = []
    names: dict[str, Path] = {}
    files: dict[Path, Path] = {}  # each file once, in the order first given
    for p in paths:
        for f in journey_files(p):
            files.setdefault(f.resolve(), f)
    for path in files.values():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror}")
            continue
        journey, found = check_text(text, str(path), catalog)
        problems += found
        if journey is None:
            continue
        if journey.name in names:
            line = _name_line(text)
            problems.append(
                f"{path}:{line}: journey {journey.name}: name: journey name {journey.name!r} "
                f"is also in {names[journey.name]}"
            )
            continue
        names[journey.name] = path
        journeys.append(journey)
    return journeys, problems


def check_text(text: str, source: str, catalog: Catalog) -> tuple[Journey | None, list[str]]:
    """The journey of one file's text (None when it has problems) and one line per problem."""
    name = _guess_name(text)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [f"{source}:{line}: journey {name}: invalid YAML: {problem}"]
    finally:
        loader.dispose()
    if root is None or not isinstance(data, dict):
        why = "expected a mapping with name, offers, entry and steps"
        return None, [f"{source}:1: journey {name}: journey: {why}"]
    if isinstance(data.get("name"), str):
        name = data["name"]
    twice = _duplicate_keys(root, ())
    found: list[Problem] = [(loc, why) for loc, why, _ in twice]
    lines_of = {(loc, why): line for loc, why, line in twice}
    journey: Journey | None = None
    try:
        journey = Journey.model_validate(data)
    except ValidationError as exc:
        found += _translate(exc.errors(), data)
    parts = _parts(data)
    found += _graph(data, parts)
    found += check_parts(parts, catalog)
    if not found:
        return journey, []
    raw_steps = data.get("steps")
    ids = [
        s.get("id") if isinstance(s, dict) and isinstance(s.get("id"), str) else None
        for s in (raw_steps if isinstance(raw_steps, list) else [])
    ]
    lines: list[tuple[int, str]] = []
    for loc, reason in found:
        line = lines_of.get((loc, reason)) or _node_at(root, loc).start_mark.line + 1
        text_line = f"{source}:{line}: journey {name}: {where(loc, ids)}: {reason}"
        if all(text_line != seen for _, seen in lines):
            lines.append((line, text_line))
    return None, [t for _, t in sorted(lines, key=lambda x: x[0])]


# --- the pieces -------------------------------------------------------------------------------
@functools.cache
def _adapter(field: str) -> TypeAdapter[Any]:
    info = Journey.model_fields[field]
    return TypeAdapter(Annotated[info.annotation, info])  # type: ignore[arg-type]


def _parts(data: dict[str, Any]) -> dict[str, Any]:
    """Each top-level field validated on its own (its default when absent); those that fail
    are left out."""
    parts: dict[str, Any] = {}
    for field, info in Journey.model_fields.items():
        if field in data:
            value = data[field]
        elif not info.is_required():
            value = info.get_default(call_default_factory=True)
        else:
            continue
        with contextlib.suppress(ValidationError):
            parts[field] = _adapter(field).validate_python(value)
    return parts


def _graph(data: dict[str, Any], parts: dict[str, Any]) -> list[Problem]:
    """The step graph's problems. When some steps do not parse, each stands in as an exit under
    its id, and only the checks that cannot mislead then run (ids, successors, shares); the
    steps that parsed join ``parts`` for the cross-checks."""
    if "steps" in parts:
        return graph_problems(parts["steps"])
    raw = data.get("steps")
    if not isinstance(raw, list) or not raw:
        return []
    steps: list[Any] = []
    for k, item in enumerate(raw):
        try:
            steps.append(_step_adapter().validate_python(item))
        except ValidationError:
            sid = item.get("id") if isinstance(item, dict) else None
            steps.append(ExitStep.model_construct(id=sid if isinstance(sid, str) else f"?{k}"))
    parts["steps"] = steps
    partial = ("unreachable", "is not a message step", "cycle with no wait")
    return [p for p in graph_problems(steps) if not any(w in p[1] for w in partial)]


@functools.cache
def _step_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(Step)


def _guess_name(text: str) -> str:
    m = re.search(r"^name:\s*['\"]?([A-Za-z0-9_]+)", text, re.MULTILINE)
    return m.group(1) if m else "?"


def _name_line(text: str) -> int:
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("name:"):
            return n
    return 1


def _node_at(root: yaml.Node, loc: Loc) -> yaml.Node:
    """The deepest YAML node along a location (for its line number)."""
    node = root
    for key in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            nxt = node.value[key] if key < len(node.value) else None
        if nxt is None:
            break
        node = nxt
    return node


def _duplicate_keys(node: yaml.Node, loc: Loc) -> list[tuple[Loc, str, int]]:
    """PyYAML keeps the last of repeated keys silently; a journey must not. Each at the line
    of its second spelling."""
    found: list[tuple[Loc, str, int]] = []
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for k, v in node.value:
            if k.value in keys:
                why = "key given twice (YAML keeps only the last)"
                found.append(((*loc, k.value), why, k.start_mark.line + 1))
            keys.add(k.value)
            found += _duplicate_keys(v, (*loc, k.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found += _duplicate_keys(v, (*loc, i))
    return found


# --- pydantic's errors as a marketer reads them -----------------------------------------------
_KINDS = {
    "Journey": "journey",
    "Goal": "goal",
    "ExitRule": "exit rule",
    "SplitBranch": "split branch",
    "PathBranch": "path",
    "ScoreRule": "score condition",
    "Rule": "condition",
}
_LINKS = {
    "next": "next (the id of the step after it)",
    "on_event": "on_event (the step after the event)",
    "on_timeout": "on_timeout (the step after the timeout)",
    "otherwise": "otherwise (the step when no branch holds)",
}
_PATTERNS = {
    NAME: "expected lower-case letters, digits and _, starting with a letter (at most 40)",
    r"^(\d{4}-)?\d{2}-\d{2}$": "expected YYYY-MM-DD (once) or MM-DD (every year)",
}


def _member(part: str) -> str | None:
    """The union member a location part names (``ScoreRule``, ``function-after[..., Rule]``)."""
    if "ScoreRule" in part:
        return "ScoreRule"
    return "Rule" if re.search(r"\bRule\b", part) else None


def _clean(raw: tuple[Any, ...], data: Any) -> tuple[Loc, bool]:
    """A pydantic location without its union tags, and whether to keep the error: of a
    condition's two possible forms only the one the input meant (``score`` given or not)."""
    node, out = data, []
    for part in raw:
        if isinstance(part, int):
            out.append(part)
            node = node[part] if isinstance(node, list) and part < len(node) else None
        elif isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif part == "[key]" or part.startswith("literal["):
            continue
        elif isinstance(node, dict) and node.get("type") == part:
            continue  # the discriminator's tag
        elif (member := _member(part)) is not None:
            meant = "ScoreRule" if isinstance(node, dict) and "score" in node else "Rule"
            if member != meant:
                return tuple(out), False
        else:
            out.append(part)  # a missing or unknown key
            node = None
    return tuple(out), True


def _models_in(tp: Any) -> tuple[list[type[BaseModel]], bool]:
    """The models a field's type holds (through Annotated, Optional, list, dict), and whether
    they sit in a dict (the next location part is a key)."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _models_in(get_args(tp)[0])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp], False
    if origin is dict:
        return _models_in(get_args(tp)[1])[0], True
    if origin in (list, Union) or str(origin) == "<class 'types.UnionType'>":
        args = get_args(tp)
        return [m for a in args for m in _models_in(a)[0]], False
    return [], False


def _tag(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    args = get_args(field.annotation) if field else ()
    return args[0] if args else None


def _model_for(raw: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model a raw pydantic location points into."""
    models: list[type[BaseModel]] = [Journey]
    skip_key = False
    for part in raw:
        if isinstance(part, int) or part == "[key]":
            continue
        if skip_key:
            skip_key = False
            continue
        if len(models) > 1:
            pick = [m for m in models if part in (_tag(m), m.__name__, _member(part))]
            if len(pick) != 1:
                return None
            models = pick
            continue
        info = models[0].model_fields.get(part)
        if info is None:
            return None
        models, skip_key = _models_in(info.annotation)
        if not models:
            return None
    return models[0] if len(models) == 1 else None


def _kind(model: type[BaseModel] | None) -> str:
    if model is None:
        return "this"
    tag = _tag(model)
    if tag and model.__name__.endswith("Trigger"):
        return f"{tag} trigger"
    return tag or _KINDS.get(model.__name__, model.__name__.lower())


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _translate(errors: list[Any], data: dict[str, Any]) -> list[Problem]:
    """Pydantic's errors as (location, reason); literal errors of one place merged (a channel
    is one of the channels or best_channel)."""
    found: list[Problem] = []
    literals: dict[Loc, tuple[Any, list[str]]] = {}
    for err in errors:
        raw, kind = tuple(err["loc"]), err["type"]
        if not raw:
            continue  # the step graph's first problem: graph_problems gives them all
        loc, keep = _clean(raw, data)
        if not keep:
            continue
        if kind == "literal_error":
            expected = re.findall(r"'([^']*)'", err["ctx"]["expected"])
            value, before = literals.get(loc, (err["input"], []))
            literals[loc] = (value, before + [e for e in expected if e not in before])
            continue
        found.append(_reason(err, raw, loc))
    for loc, (value, expected) in literals.items():
        if set(EVENT_TYPES) <= set(expected):
            what = "event type"
        elif set(expected) - {"best_channel"} <= set(CHANNELS) and len(expected) > 3:
            what = "channel"
        else:
            what = next((p for p in reversed(loc) if isinstance(p, str)), "value")
        found.append((loc, f"unknown {what} {value!r} (known: {', '.join(expected)})"))
    return found


def _reason(err: Any, raw: tuple[Any, ...], loc: Loc) -> Problem:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        field = str(loc[-1])
        needs = _LINKS.get(field) or (field if field.endswith("s") else _a(field))
        return loc, f"{_a(_kind(_model_for(raw[:-1])))} needs {needs}"
    if kind == "extra_forbidden":
        model = _model_for(raw[:-1])
        allowed = f" (allowed: {', '.join(model.model_fields)})" if model else ""
        return loc, f"unknown key{allowed}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        what = "step" if loc[:1] == ("steps",) else "trigger"
        known = ", ".join(str(_tag(m)) for m in _models_in(Step if what == "step" else Trigger)[0])
        if kind == "union_tag_not_found":
            return (*loc, "type"), f"{_a(what)} needs a type (one of: {known})"
        return (*loc, "type"), f"unknown {what} type {err['ctx']['tag']!r} (known: {known})"
    if kind == "list_type":
        return loc, f"expected a list, got {err['input']!r}"
    if kind == "too_short":
        n, got = err["ctx"]["min_length"], err["ctx"]["actual_length"]
        return loc, f"expected at least {n} {'item' if n == 1 else 'items'}, got {got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return loc, "expected a mapping (key: value lines)"
    if kind == "string_pattern_mismatch":
        return loc, f"{_PATTERNS.get(err['ctx']['pattern'], msg)}, got {err['input']!r}"
    if kind == "value_error":
        reason = msg.removeprefix("Value error, ")
        model = _model_for(raw)
        m = re.match(r"^([a-z_]+): (.+)$", reason)
        if m and model is not None and m.group(1) in model.model_fields:
            return (*loc, m.group(1)), m.group(2)
        return loc, reason
    return loc, msg
