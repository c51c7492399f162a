"""What each journey added over its holdout: entered, converted and the lift with its interval,
the message funnel per step, and the path experiments of its ``random_split`` steps.

Pure functions over two frames, so the simulator (``simulator.journey_sim``) and the ledger
(:func:`journey_frames`) are measured by the same code:

- ``units``: one row per instance, treated or held out: journey, version, instance_id,
  customer_id, arm (``treatment`` | ``holdout``), path (the random_split branch, or None),
  entered_at, converted (the goal within the journey's window), goal_at;
- ``steps``: one row per message step taken: instance_id, journey, step_id, channel and four
  flags, sent, delivered, opened, clicked.

The lift is intent to treat: every treated instance counts whatever happened to its messages,
as every holdout instance "would have entered". Intervals come from the report's own engine,
:func:`estimation.uplift.compare` (Wald, or Agresti-Caffo when a group has few conversions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy import stats
from sqlalchemy import Engine, Select, exists, inspect, select

from estimation.uplift import ArmComparison, compare
from estimation.uplift_stats import holm
from journeys.definition import Goal, Journey, RandomSplitStep
from journeys.state import journey_instances, journey_steps, journey_versions
from record.tables import decisions, outbox, outcomes

UNIT_COLUMNS = ["journey", "version", "instance_id", "customer_id", "arm", "path",
                "entered_at", "converted", "goal_at"]  # fmt: skip
STEP_COLUMNS = ["instance_id", "journey", "step_id", "channel",
                "sent", "delivered", "opened", "clicked"]  # fmt: skip
STAGES = ("sent", "delivered", "opened", "clicked")


class ArmCounts(BaseModel):
    entered: int
    converted: int
    rate: float | None  # None: nobody entered this arm


class StepFunnel(BaseModel):
    """Treated instances at each stage of one message step (on one channel), and how many of
    them reached the goal: instances, not messages, so a rate reads per customer."""

    step_id: str
    channel: str | None
    sent: int
    delivered: int
    opened: int
    clicked: int
    converted_sent: int
    converted_delivered: int
    converted_opened: int
    converted_clicked: int


class PathResult(BaseModel):
    """One branch of a path experiment: its conversion, and against the reference branch."""

    path: str
    entered: int
    converted: int
    rate: float
    versus: str | None  # the reference path; None for the reference itself
    difference: ArmComparison | None
    note: str = ""


class JourneyResult(BaseModel):
    journey: str
    versions: list[str]
    window_days: float | None  # the goal window of its definition, when known
    treated: ArmCounts
    holdout: ArmCounts
    lift: ArmComparison | None
    note: str  # why there is no lift, else empty
    steps: list[StepFunnel]
    paths: list[PathResult]
    verdict: str = ""  # the report's sentence for a marketer

    @property
    def measured(self) -> tuple[float, float, float] | None:
        """(lift, ci low, ci high), or None when no interval could be computed."""
        if self.lift is None or self.lift.ci is None:
            return None
        return self.lift.lift, self.lift.ci.low, self.lift.ci.high


def _arm(part: pd.DataFrame) -> ArmCounts:
    n, x = len(part), int(part["converted"].sum())
    return ArmCounts(entered=n, converted=x, rate=x / n if n else None)


def _comparison(
    arm: str,
    control: str,
    y_t: np.ndarray,
    y_c: np.ndarray,
    alpha: float,
    who_t: np.ndarray | None = None,
    who_c: np.ndarray | None = None,
) -> tuple[ArmComparison | None, str]:
    """The engine's comparison, or the reason it cannot be made (an empty group). ``who_*``:
    the customer of each instance; a customer who entered more than once is one sticky draw,
    so the interval is widened by the design effect of those clusters."""
    for label, y in ((arm, y_t), (control, y_c)):
        if len(y) == 0:
            return None, f"no {label} instances: lift cannot be measured"
    comp = compare(arm, control, y_t.astype(float), y_c.astype(float), True, alpha)
    if comp.ci is None:
        return comp, comp.note or ""
    if who_t is not None and who_c is not None:
        _widen(comp, design_effect(y_t, who_t, y_c, who_c))
    return comp, ""


def _cluster_var(y: np.ndarray, who: np.ndarray) -> tuple[float, float]:
    """(independent, cluster-robust) variance of one arm's rate: the rate is a ratio of
    conversions to entries summed by customer (the sandwich estimator of a ratio mean). Both
    carry their small-sample factor, so with no customer twice they are equal."""
    n, p = len(y), float(y.mean())
    by = pd.DataFrame({"y": y.astype(float), "c": who}).groupby("c")["y"].agg(["sum", "size"])
    k = len(by)
    resid = by["sum"].to_numpy() - p * by["size"].to_numpy()
    robust = (k / (k - 1)) * float((resid**2).sum()) / n**2 if k > 1 else 0.0
    return (p * (1 - p) / (n - 1) if n > 1 else 0.0), robust


def design_effect(y_t: np.ndarray, who_t: np.ndarray, y_c: np.ndarray, who_c: np.ndarray) -> float:
    """How much repeat entries of the same customers inflate the lift's variance: the
    cluster-robust variance of the difference over the independent one, at least 1 (a
    smaller ratio is noise, and an interval is never narrowed for it)."""
    if pd.Series(who_t).is_unique and pd.Series(who_c).is_unique:
        return 1.0  # no customer twice: the instances are the independent units
    (iid_t, rob_t), (iid_c, rob_c) = _cluster_var(y_t, who_t), _cluster_var(y_c, who_c)
    iid = iid_t + iid_c
    return max(1.0, (rob_t + rob_c) / iid) if iid > 0 else 1.0


def _widen(comp: ArmComparison, deff: float) -> None:
    """Scale the interval's half-widths and the test by the design effect."""
    if deff <= 1.0:
        return
    k = float(np.sqrt(deff))
    for ci in (comp.ci, comp.sequential_ci):
        if ci is not None:
            ci.low = max(comp.lift - k * (comp.lift - ci.low), -1.0)
            ci.high = min(comp.lift + k * (ci.high - comp.lift), 1.0)
    if comp.statistic is not None:
        comp.statistic /= k
        comp.p_value = float(2 * stats.norm.sf(abs(comp.statistic)))
    widened = f"interval widened x{k:.2f}: customers who entered more than once"
    comp.note = f"{comp.note}; {widened}" if comp.note else widened


def funnel(units: pd.DataFrame, steps: pd.DataFrame, order: Sequence[str] = ()) -> list[StepFunnel]:
    """Per (step, channel): instances sent, delivered, opened, clicked, and converted among each.

    ``order``: step ids in the journey's order (its definition); steps not in it follow in the
    order they first appear."""
    if steps.empty:
        return []
    flags = steps[["instance_id", "step_id", "channel", *STAGES]].copy()
    flags["channel"] = flags["channel"].astype(object).where(flags["channel"].notna(), None)
    for stage in STAGES:
        flags[stage] = flags[stage].fillna(False).astype(bool)
    keys = ["step_id", "channel", "instance_id"]
    per = flags.groupby(keys, sort=False, dropna=False)[list(STAGES)].any().reset_index()
    won = units.drop_duplicates("instance_id").set_index("instance_id")["converted"]
    per["converted"] = per["instance_id"].map(won).fillna(False).astype(bool)
    seen = list(dict.fromkeys(per["step_id"]))
    rank = {s: i for i, s in enumerate([*order, *[s for s in seen if s not in order]])}
    out = []
    for (step_id, channel), g in per.groupby(["step_id", "channel"], sort=False, dropna=False):
        counts = {stage: int(g[stage].sum()) for stage in STAGES}
        conv = {f"converted_{s}": int((g[s] & g["converted"]).sum()) for s in STAGES}
        out.append(StepFunnel(step_id=step_id, channel=channel, **counts, **conv))
    return sorted(out, key=lambda f: (rank[f.step_id], f.channel or ""))


def paths(
    treated: pd.DataFrame, reference: str | None = None, alpha: float = 0.05
) -> list[PathResult]:
    """A path experiment: conversion per branch, each against ``reference`` (default: the
    first branch by name), Holm-adjusted over the branches compared."""
    taken = treated[treated["path"].notna()]
    names = sorted(taken["path"].astype(str).unique())
    if len(names) < 1:
        return []
    ref = reference if reference in names else names[0]
    on = {p: taken[taken["path"].astype(str) == p] for p in names}
    y = {p: g["converted"].to_numpy(bool) for p, g in on.items()}
    who = {p: g["customer_id"].to_numpy() for p, g in on.items()}
    out = []
    for p in [ref, *[n for n in names if n != ref]]:
        comp, note = (
            (None, "") if p == ref
            else _comparison(p, ref, y[p], y[ref], alpha, who[p], who[ref])
        )  # fmt: skip
        out.append(
            PathResult(
                path=p, entered=len(y[p]), converted=int(y[p].sum()), rate=float(y[p].mean()),
                versus=None if p == ref else ref, difference=comp, note=note,
            )
        )  # fmt: skip
    comps = [r.difference for r in out[1:]]
    for c, adj in zip(comps, holm([c.p_value if c else None for c in comps]), strict=True):
        if c is not None:
            c.p_adjusted, c.significant = adj, adj is not None and adj < alpha
    return out


def _definition_order(journey: Journey | None) -> tuple[list[str], str | None]:
    """The step ids in file order and the first branch of the first random_split."""
    if journey is None:
        return [], None
    splits = [s for s in journey.steps if isinstance(s, RandomSplitStep)]
    return [s.id for s in journey.steps], splits[0].branches[0].name if splits else None


def evaluate(
    units: pd.DataFrame,
    steps: pd.DataFrame,
    definitions: dict[str, Journey] | None = None,
    alpha: float = 0.05,
) -> list[JourneyResult]:
    """Every journey in ``units``: arms, lift with its interval, funnel, path experiments.

    ``definitions`` (by name) only orders the steps and picks the reference path as the file
    does; every number comes from the frames."""
    if units.empty:
        return []
    definitions = definitions or {}
    results = []
    for name, part in units.groupby("journey", sort=True):
        t, h = part[part["arm"] == "treatment"], part[part["arm"] == "holdout"]
        comp, note = _comparison(
            "treatment", "holdout", t["converted"].to_numpy(bool), h["converted"].to_numpy(bool),
            alpha, t["customer_id"].to_numpy(), h["customer_id"].to_numpy(),
        )  # fmt: skip
        if comp is not None and comp.p_value is not None:  # one journey, one test: no family
            comp.p_adjusted, comp.significant = comp.p_value, comp.p_value < alpha
        definition = definitions.get(str(name))
        order, reference = _definition_order(definition)
        own_steps = steps[steps["journey"] == name] if not steps.empty else steps
        results.append(
            JourneyResult(
                journey=str(name),
                versions=sorted(part["version"].astype(str).unique()),
                window_days=definition.goal.within.total_seconds() / 86400 if definition else None,
                treated=_arm(t),
                holdout=_arm(h),
                lift=comp,
                note=note,
                steps=funnel(t, own_steps, order),
                paths=paths(t, reference, alpha),
            )
        )
    return results


# --- the ledger -------------------------------------------------------------------------------
def _utc(values: pd.Series) -> pd.Series:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return pd.to_datetime(values, utc=True)


def goal_windows(engine: Engine) -> dict[tuple[str, str], pd.Timedelta]:
    """(journey, version) -> its goal window, from the definition each version was stored with."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(journey_versions.c.journey, journey_versions.c.version,
                   journey_versions.c.definition)
        ).all()  # fmt: skip
    return {
        (r.journey, r.version): pd.Timedelta(Journey.model_validate(r.definition).goal.within)
        for r in rows
    }


def journey_definitions(engine: Engine) -> dict[str, Journey]:
    """The newest stored version of each journey (orders its steps and paths in the report)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(journey_versions.c.journey, journey_versions.c.definition).order_by(
                journey_versions.c.created_at
            )
        ).all()
    return {r.journey: Journey.model_validate(r.definition) for r in rows}


def journey_frames(engine: Engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``units`` and ``steps`` frames from the ledger database.

    An instance converted when its ``goal_at`` falls within its version's goal window of
    ``entered_at``. A message step counts as sent when the runner sent it (``sent``) or queued
    it as a banner for the next visit (``banner``); delivered when its outbox row or its
    decision says ``delivered`` (a banner: when ``/decide`` showed it, decision ``shown``);
    opened and clicked when an ``open`` or ``click`` outcome names its decision.
    """
    if not inspect(engine).has_table(journey_instances.name):
        return pd.DataFrame(columns=UNIT_COLUMNS), pd.DataFrame(columns=STEP_COLUMNS)
    i = journey_instances
    with engine.connect() as conn:
        units = pd.DataFrame(
            conn.execute(
                select(i.c.journey, i.c.version, i.c.instance_id, i.c.customer_id, i.c.arm,
                       i.c.path, i.c.entered_at, i.c.goal_at)
            ).all(),
            columns=[c for c in UNIT_COLUMNS if c != "converted"],
        )  # fmt: skip
        steps = pd.DataFrame(conn.execute(_step_query()).all(), columns=_STEP_QUERY_COLUMNS)
    units["entered_at"], units["goal_at"] = _utc(units["entered_at"]), _utc(units["goal_at"])
    windows = goal_windows(engine)
    default = pd.Timedelta(Goal().within)
    window = pd.Series(
        [windows.get(k, default) for k in zip(units["journey"], units["version"], strict=True)],
        index=units.index,
        dtype="timedelta64[ns]",
    )
    delay = units["goal_at"] - units["entered_at"]
    units["converted"] = units["goal_at"].notna() & (delay >= pd.Timedelta(0)) & (delay <= window)
    units = units[UNIT_COLUMNS]
    delivered = steps["outbox_status"].eq("delivered") | steps["decision_status"].eq("delivered")
    banner_shown = steps["result"].eq("banner") & steps["decision_status"].eq("shown")
    steps["sent"] = True
    steps["delivered"] = delivered | banner_shown
    steps["opened"] = steps["opened"].fillna(False).astype(bool)
    steps["clicked"] = steps["clicked"].fillna(False).astype(bool)
    return units.reset_index(drop=True), steps[STEP_COLUMNS].reset_index(drop=True)


_STEP_QUERY_COLUMNS = ["instance_id", "journey", "step_id", "channel", "result",
                       "decision_status", "outbox_status", "opened", "clicked"]  # fmt: skip


def _step_query() -> Select:
    """Message steps with their decision's and outbox row's status and any open or click."""
    s, i, d, o, oc = journey_steps, journey_instances, decisions, outbox, outcomes

    def reported(kind: str):  # noqa: ANN202 - a SQL boolean column
        return (
            exists()
            .where(oc.c.decision_id == s.c.decision_id, oc.c.type == kind)
            .label({"open": "opened", "click": "clicked"}[kind])
        )

    return (
        select(s.c.instance_id, i.c.journey, s.c.step_id, s.c.channel, s.c.result,
               d.c.status, o.c.status, reported("open"), reported("click"))
        .select_from(
            s.join(i, i.c.instance_id == s.c.instance_id)
            .outerjoin(d, d.c.decision_id == s.c.decision_id)
            .outerjoin(o, o.c.message_id == s.c.message_id)
        )
        .where(s.c.result.in_(("sent", "banner")))
        .order_by(s.c.instance_id, s.c.seq)
    )  # fmt: skip
