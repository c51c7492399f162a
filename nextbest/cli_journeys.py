"""Journey commands: check journey files before they run, export their JSON Schema.

``nextbest.cli`` mounts ``journeys_app`` as ``nextbest journeys``; add further journey
commands (the runner, the evaluation) here with ``@journeys_app.command(...)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from nextbest.cli_common import JsonFlag, fail
from nextbest.settings import get_settings

journeys_app = typer.Typer(
    no_args_is_help=True, help="Journeys: always-on, triggered, multi-step dialogs."
)


@journeys_app.command("validate")
def validate_cmd(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="journey files or folders; default: the active journeys folder"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check journey files against the model, the step graph and the offer catalogue: one line
    per problem on stderr and exit 1, or ``ok: N journeys (names)``."""
    from journeys.load import check_paths
    from offers.catalog import CatalogError, load_catalog

    if not paths:
        folder = get_settings().journeys_path
        if not folder.is_dir():
            print(f"no folder {folder}: no journeys are active", file=sys.stderr)
        paths = [folder] if folder.is_dir() else []
    try:
        catalog = load_catalog()
    except CatalogError as exc:
        fail(str(exc))
    journeys, problems = check_paths(paths, catalog)
    for line in problems:
        print(line, file=sys.stderr)
    if as_json:
        found = [{"name": j.name, "version": j.version} for j in journeys]
        print(json.dumps({"journeys": found, "problems": problems}))
    elif not problems:
        print(f"ok: {len(journeys)} journeys ({', '.join(j.name for j in journeys)})")
    if problems:
        raise typer.Exit(1)


@journeys_app.command("schema")
def schema_cmd(
    out: Annotated[
        Path | None, typer.Option(help="write the schema to this file instead of stdout")
    ] = None,
) -> None:
    """The JSON Schema of a journey file, for editors (YAML language servers, IDEs)."""
    from journeys.load import schema_text

    if out is None:
        sys.stdout.write(schema_text())
        return
    try:
        out.write_text(schema_text(), encoding="utf-8")
    except OSError as exc:
        fail(f"--out {out}: cannot write: {exc.strerror}")
    print(f"wrote {out}")
