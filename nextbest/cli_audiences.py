"""Segments and target groups (issue 18): ``nextbest segments describe|refresh`` and
``nextbest audience preview|rebuild|export``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from nextbest.cli_common import JsonFlag, console, emit, fail
from nextbest.settings import get_settings

segments_app = typer.Typer(no_args_is_help=True, help="RFM segments and behavioural clusters.")
audience_app = typer.Typer(
    no_args_is_help=True, help="Target groups (<home>/audiences/NAME.yaml) and paid-media export."
)
Name = Annotated[str, typer.Argument(help="the target group (<home>/audiences/NAME.yaml)")]


@segments_app.command("describe")
def describe(as_json: JsonFlag = False) -> None:
    """Size, share and mean profile of each RFM segment and each behavioural cluster."""
    from features.segments import describe as run

    try:
        result = run(get_settings())
    except FileNotFoundError as exc:
        fail(str(exc))
    if not as_json:
        _table("RFM segments", result["rfm"])
        _table("Behavioural clusters", result["clusters"])
        return
    emit(result, as_json)


def _table(title: str, rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("segment", "size", "share", "spend_90d", "purchases_90d", "recency_days"):
        table.add_column(col, justify="left" if col == "segment" else "right")
    for r in rows:
        m = r["mean"]
        table.add_row(
            str(r["segment"]), str(r["size"]), f"{r['share']:.1%}",
            *(("-" if m.get(c) is None else f"{m[c]:.1f}") for c in
              ("spend_90d", "purchases_90d", "recency_days")),
        )  # fmt: skip
    console.print(table)


@segments_app.command("refresh")
def refresh(
    no_materialize: Annotated[
        bool, typer.Option("--no-materialize", help="write the file only, not the online store")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Re-cluster on the latest snapshot (clusters matched to the previous ones), score each
    customer's preferred channel, write the segments view and load it online."""
    from serving.deps import load_deps
    from serving.segments import refresh as run

    deps = load_deps(get_settings().ensure_dirs())
    try:
        result = run(deps, materialize=not no_materialize)
    except (FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
    emit(result, as_json)


def _group(name: str):  # noqa: ANN202 - serving import kept lazy
    from serving.target_groups import TargetGroupError, get_group

    try:
        return get_group(get_settings(), name)
    except TargetGroupError as exc:
        fail(str(exc))


def _on_group(name: str, run: Callable[[Any, Any], dict[str, Any]], as_json: bool) -> None:
    """Load target group NAME and the service's parts, run ``run(deps, group)``, print it."""
    from serving.deps import load_deps

    group = _group(name)
    try:
        result = run(load_deps(get_settings().ensure_dirs()), group)
    except RuntimeError as exc:
        fail(str(exc))
    emit(result, as_json)


@audience_app.command("preview")
def preview(name: Name, as_json: JsonFlag = False) -> None:
    """Size and composition of target group NAME as it would be now (nothing is stored)."""
    from serving.audiences import preview as run

    _on_group(name, run, as_json)


@audience_app.command("rebuild")
def rebuild(name: Name, as_json: JsonFlag = False) -> None:
    """Re-evaluate every customer and store NAME's membership (arms sticky, holdout included)."""
    from serving.audiences import rebuild as run

    _on_group(name, run, as_json)


@audience_app.command("export")
def export(
    name: Name,
    platform: Annotated[Literal["google", "meta"], typer.Option(help="the ad platform's format")],
    out: Annotated[Path, typer.Option(help="folder the request files go to")],
    max_rows: Annotated[
        int | None,
        typer.Option(min=1, help="members per request (default and maximum: the platform's)"),
    ] = None,
    rebuild_first: Annotated[
        bool, typer.Option("--rebuild/--no-rebuild", help="rebuild the membership first")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Write NAME's membership changes since the last export to PLATFORM (adds and removes,
    hashed, consented treatment members only; the holdout never) as request files in OUT."""
    from serving.audiences import rebuild as run_rebuild
    from serving.deps import load_deps
    from serving.paid_media_export import ExportError
    from serving.paid_media_export import export as run

    group = _group(name)
    deps = load_deps(get_settings().ensure_dirs())
    try:
        if rebuild_first:
            run_rebuild(deps, group)
        result = run(deps, group, platform, out, max_rows)
    except (ExportError, RuntimeError) as exc:
        fail(str(exc))
    emit(result, as_json)
