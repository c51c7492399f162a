"""What every ``nextbest`` command shares: the stderr console, the --json flag, emit and fail."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

console = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON object on the last line")]


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Print a result: a Rich view for people, or one JSON line for machines."""
    if as_json:
        print(json.dumps(result, default=str))
    else:
        console.print_json(json.dumps(result, default=str))


def fail(message: str) -> NoReturn:
    """Exit 2 with a one-line message naming what was wrong."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def settings_error(exc: ValidationError) -> str:
    """A pydantic-settings ValidationError as one line: each bad variable, why, what it got."""
    parts = []
    for e in exc.errors():
        name = f"NEXTBEST_{e['loc'][0]}".upper() if e["loc"] else "NEXTBEST_*"
        parts.append(f"{name}: {e['msg']} (got {e.get('input')!r})")
    return "settings: " + "; ".join(parts)
