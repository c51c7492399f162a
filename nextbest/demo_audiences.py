"""The demo's segments and audiences stage (issue 18): segments of the simulated base, the
shipped target group's size, and where its paid-media export files are."""

from __future__ import annotations

import contextlib
import io
import shutil
from typing import Any

from rich.console import Console
from rich.table import Table

from nextbest.settings import Settings

GROUP = "device_intent"


def _segment_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("segment", "customers", "share", "spend 90d", "purchases 90d"):
        table.add_column(col, justify="left" if col == "segment" else "right")
    for r in rows:
        m = r["mean"]
        table.add_row(
            str(r["segment"]), str(r["size"]), f"{r['share']:.1%}",
            f"{m.get('spend_90d') or 0:.1f}", f"{m.get('purchases_90d') or 0:.2f}",
        )  # fmt: skip
    return table


def segments_and_audiences(settings: Settings, console: Console) -> dict[str, Any]:
    """Refresh segments (with preferred channels), print them, install the shipped target
    group, rebuild it, export it to both platforms; returns the figures."""
    from features.segments import describe
    from serving.audiences import rebuild
    from serving.deps import load_deps
    from serving.paid_media_export import export
    from serving.segments import refresh
    from serving.target_groups import EXAMPLES, get_group, groups_dir

    deps = load_deps(settings)
    with contextlib.redirect_stderr(io.StringIO()):  # Feast's materialisation banner
        refreshed = refresh(deps)
    summary = describe(settings)
    console.print(_segment_table("RFM segments", summary["rfm"]))
    console.print(_segment_table("Behavioural clusters", summary["clusters"]))
    console.print(f"preferred channels: {refreshed['preferred_channel']}")

    folder = groups_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / f"{GROUP}.yaml", folder / f"{GROUP}.yaml")
    group = get_group(settings, GROUP)
    built = rebuild(deps, group)
    console.print(
        f"target group {GROUP} ({group.description}): {built['members']} of "
        f"{built['customers']} customers, {built['holdout']} held out (as of {built['as_of']})"
    )
    out_dir = settings.home / "audiences" / "exports"
    exports = {p: export(deps, group, p, out_dir) for p in ("google", "meta")}
    for platform, e in exports.items():
        where = e["folder"] or "nothing to send"
        console.print(
            f"{platform}: {e['exported_customers']} customers exported (adds "
            f"{e['added_customers']}, removes {e['removed_customers']}; "
            f"{e['no_consent_or_key']} without ad consent or a key): {where}"
        )
    return {
        "segments": {"rfm": len(summary["rfm"]), "clusters": len(summary["clusters"])},
        "audience": built,
        "exports": {
            p: {k: e[k] for k in ("exported_customers", "folder")} for p, e in exports.items()
        },
    }
