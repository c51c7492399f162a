"""Charts and HTML of the uplift report, and the files it is written to.

Plotly figures are built here as JSON and drawn by plotly.js, which is inlined once into the
page so the file opens anywhere without a network (no CDN).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from jinja2 import Environment, FileSystemLoader, select_autoescape

from experiments.report import DIMENSIONS, ReportData, build_report

TEMPLATES = Path(__file__).parent / "templates"
TREATED, HOLDOUT, LIGHT = "#1f6feb", "#8b949e", "rgba(31,111,235,0.25)"


def _forest(data: ReportData, dim: str) -> go.Figure | None:
    rows = [ln for ln in data.lines if ln.dimension == dim and ln.conversion and ln.conversion.ci]
    if not rows:
        return None
    rows = rows[::-1]
    y = [ln.label for ln in rows]
    lift = np.array([100 * ln.conversion.lift for ln in rows])
    lo = np.array([100 * ln.conversion.ci.low for ln in rows])
    hi = np.array([100 * ln.conversion.ci.high for ln in rows])
    seq_lo = np.array([100 * ln.conversion.sequential_ci.low for ln in rows])
    seq_hi = np.array([100 * ln.conversion.sequential_ci.high for ln in rows])
    fig = go.Figure()
    fig.add_scatter(x=lift, y=y, mode="markers", name="always-valid 95% (for peeking)",
                    marker={"color": LIGHT, "size": 1},
                    error_x={"type": "data", "array": seq_hi - lift, "arrayminus": lift - seq_lo,
                             "color": LIGHT, "thickness": 8, "width": 0})  # fmt: skip
    fig.add_scatter(x=lift, y=y, mode="markers", name="lift, 95% CI",
                    marker={"color": TREATED, "size": 9},
                    error_x={"type": "data", "array": hi - lift, "arrayminus": lift - lo,
                             "color": TREATED, "thickness": 2})  # fmt: skip
    fig.add_vline(x=0, line_color="#444", line_dash="dot")
    fig.update_layout(
        title=f"{DIMENSIONS[dim]}: lift in {data.window_days}-day conversion (points)",
        xaxis_title="treated minus holdout, percentage points",
        height=140 + 34 * len(rows), margin={"l": 260},
    )  # fmt: skip
    return fig


def _cumulative(series) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=series.dates, y=[100 * v for v in series.treated], name="treated",
                    line={"color": TREATED})  # fmt: skip
    fig.add_scatter(x=series.dates, y=[100 * v for v in series.holdout], name="holdout",
                    line={"color": HOLDOUT})  # fmt: skip
    fig.update_layout(title=f"{series.experiment}: cumulative conversion", height=320,
                      yaxis_title="% of customers exposed so far")  # fmt: skip
    return fig


def _qini(data: ReportData) -> go.Figure:
    fig = go.Figure()
    for i, c in enumerate(data.qini):
        dash = "solid" if i == 0 else "dot"
        fig.add_scatter(x=c.fraction, y=c.incremental, name=f"{c.label} (Qini {c.qini:.4g})",
                        line={"dash": dash})  # fmt: skip
    if data.qini:
        c = data.qini[0]
        fig.add_scatter(x=c.fraction, y=c.random, name="random targeting",
                        line={"color": HOLDOUT, "dash": "dash"})  # fmt: skip
    fig.update_layout(title="Qini curves", xaxis_title="share of customers targeted",
                      yaxis_title="incremental conversions", height=380)  # fmt: skip
    return fig


def _ope(data: ReportData) -> go.Figure | None:
    rows = [e for e in data.ope if e.estimator == "snips"]
    if not rows:
        return None
    v = np.array([e.value for e in rows])
    fig = go.Figure(go.Bar(
        x=v, y=[e.policy for e in rows], orientation="h", marker_color=TREATED,
        error_x={"type": "data", "array": [e.ci_high for e in rows] - v,
                 "arrayminus": v - [e.ci_low for e in rows]},
    ))  # fmt: skip
    fig.update_layout(title="Off-policy value per decision (SNIPS, 95% CI)",
                      height=140 + 34 * len(rows), margin={"l": 260})  # fmt: skip
    return fig


def _journey_lifts(data: ReportData) -> go.Figure | None:
    """Each journey's lift over its holdout with its 95% interval, like the forest plots."""
    rows = [r for r in data.journeys if r.measured is not None][::-1]
    if not rows:
        return None
    lift, lo, hi = (np.array([100 * r.measured[k] for r in rows]) for k in range(3))
    fig = go.Figure()
    fig.add_scatter(x=lift, y=[r.journey for r in rows], mode="markers", name="lift, 95% CI",
                    marker={"color": TREATED, "size": 9},
                    error_x={"type": "data", "array": hi - lift, "arrayminus": lift - lo,
                             "color": TREATED, "thickness": 2})  # fmt: skip
    fig.add_vline(x=0, line_color="#444", line_dash="dot")
    fig.update_layout(title="Journeys: lift in goal conversion over the holdout (points)",
                      xaxis_title="treated minus holdout, percentage points",
                      height=140 + 34 * len(rows), margin={"l": 200})  # fmt: skip
    return fig


def _journey_funnel(result) -> go.Figure | None:
    """Treated instances sent, delivered, opened and clicked at each message step."""
    if not result.steps:
        return None
    x = [f"{f.step_id} ({f.channel})" if f.channel else f.step_id for f in result.steps]
    fig = go.Figure()
    shades = (TREATED, "#54aeff", "#80ccff", "#b6e3ff")
    for stage, colour in zip(("sent", "delivered", "opened", "clicked"), shades, strict=True):
        fig.add_bar(x=x, y=[getattr(f, stage) for f in result.steps], name=stage,
                    marker_color=colour)  # fmt: skip
    fig.add_scatter(x=x, y=[f.converted_sent for f in result.steps], mode="markers",
                    name="reached the goal (of sent)",
                    marker={"color": "#1a7f37", "size": 10, "symbol": "diamond"})  # fmt: skip
    fig.update_layout(title=f"{result.journey}: message funnel (treated instances)",
                      barmode="group", height=340, yaxis_title="instances")  # fmt: skip
    return fig


def figures(data: ReportData) -> list[dict[str, str]]:
    """Every chart as {id, section, json}, in page order."""
    figs: list[tuple[str, go.Figure | None]] = [("lift", _forest(data, d)) for d in DIMENSIONS]
    figs += [("cumulative", _cumulative(s)) for s in data.cumulative]
    figs += [("qini", _qini(data)), ("ope", _ope(data))]
    figs += [("journeys", _journey_lifts(data))]
    figs += [(f"journey:{r.journey}", _journey_funnel(r)) for r in data.journeys]
    out = []
    for i, (section, fig) in enumerate(f for f in figs if f[1] is not None):
        fig.update_layout(template="plotly_white", font={"size": 12})
        text = pio.to_json(fig, validate=False).replace("</", "<\\/")
        out.append({"id": f"fig-{i}", "section": section, "json": text})
    return out


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def render_html(data: ReportData) -> str:
    """The page: template + inline plotly.js + charts; same numbers as ``data`` (the JSON)."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    return env.get_template("report.html").render(
        data=data, figures=figures(data), plotly_js=_plotly_js(), dimensions=DIMENSIONS
    )


def report_html(settings: Any = None, world_dir: Path | None = None) -> str:
    """The report as one self-contained HTML page (plotly.js inline, nothing fetched).

    Raises ``ReportError`` when there is nothing to report (serve it as a 404 with the message).
    """
    return render_html(build_report(settings, world_dir))


def write_report(settings: Any, out: Path, world_dir: Path | None = None) -> dict[str, Any]:
    """Write ``report.html`` and ``report.json`` (the same numbers) into ``out``."""
    data = build_report(settings, world_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text(render_html(data), encoding="utf-8")
    (out / "report.json").write_text(data.model_dump_json(indent=1), encoding="utf-8")
    return {
        "html": str(out / "report.html"),
        "json": str(out / "report.json"),
        "lines": len(data.lines),
        "units": data.n_units,
        "journeys": len(data.journeys),
        "sources": data.sources,
    }
