"""``nextbest demo``: the whole loop on a simulated world, listen -> predict -> decide ->
measure, on embedded defaults only (no server to install; the service is a local
``bentoml serve`` subprocess on 127.0.0.1 that the demo starts and stops).

Every stage is the product's own code path; the demo only sequences them and prints what a
newcomer would want to see. It is also what ``tests/test_demo.py`` runs on a tiny world.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from features.schema import ID_COLUMNS
from nextbest.demo_audiences import segments_and_audiences
from nextbest.demo_journeys import journey_lifts
from nextbest.demo_service import serve_visits
from nextbest.settings import Settings

MARKER = ".nextbest-home"  # a home the demo may wipe carries this file


class DemoError(RuntimeError):
    """A demo that cannot run (e.g. a home it must not wipe)."""


# The replay's length: on the calibrated world (a purchase on 1-2% of visits) 20,000 visits
# are often too few for the bandit to beat the best single offer (seeds 7, 11, 1, 2 closed
# -0.06 to 0.63 of the gap, docs/benchmarks.md); the demo shows that honestly, in about 40 s.
REPLAY_VISITS = 20_000


def fresh_home(settings: Settings) -> None:
    """Start from nothing, but only wipe a folder Nextbest made: a mistyped NEXTBEST_HOME
    pointing at someone's data must not be deleted."""
    home = settings.home
    if home.exists() and any(home.iterdir()) and not (home / MARKER).exists():
        raise DemoError(
            f"home: {home} is not empty and was not made by nextbest; "
            "choose an empty NEXTBEST_HOME or pass --keep"
        )
    if home.exists():
        shutil.rmtree(home)
    settings.ensure_dirs()
    (home / MARKER).write_text("made by `nextbest demo`; safe to delete\n")


def _stage(console: Console, timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    console.rule(f"[bold]{name}")
    t0 = time.perf_counter()
    try:
        out = fn()
    except (ValueError, RuntimeError) as exc:  # the stages' own errors: one line, not a trace
        raise DemoError(f"{name}: {exc}") from exc
    timings[name] = round(time.perf_counter() - t0, 1)
    return out


def _identities(settings: Settings, console: Console) -> dict[str, Any]:
    from features.identity_eval import evaluate_world

    ev = evaluate_world(settings.world_dir, settings.identity_salt, settings.region)
    console.print(
        f"identity resolution vs truth: precision {ev['precision']:.4f}, recall "
        f"{ev['recall']:.4f}, F1 {ev['f1']:.4f} ({ev['records']:,} records -> "
        f"{ev['customers']:,} customers; {ev['people']:,} real people)"
    )
    return {k: ev[k] for k in ("precision", "recall", "f1", "records", "customers", "people")}


def _features(settings: Settings, console: Console) -> dict[str, Any]:
    from features.build import build_features
    from features.store import apply_repo, get_store, materialize

    built = build_features(settings)
    store = get_store(settings)
    apply_repo(store)
    with contextlib.redirect_stderr(io.StringIO()):  # Feast prints a banner per view
        mat = materialize(store)
    console.print(
        f"{built['events_mapped']:,} of {built['events']:,} events mapped to "
        f"{built['customers']:,} customers; {mat['rows']:,} online rows materialised"
    )
    _unified_profile(settings, store, console)
    return {"customers": built["customers"], "online_rows": mat["rows"]}


def _unified_profile(settings: Settings, store: Any, console: Console) -> None:
    """One person as the source systems hold them (messy, several systems) and the one
    customer and profile Nextbest made of them."""
    import pandas as pd

    from features.identity import Identifiers, graph_for
    from features.store import unified_profile

    records = pd.read_parquet(settings.world_dir / "identities.parquet")
    by_person = records.groupby("true_person_id")
    messy = (
        by_person["source"].nunique() + by_person["email"].nunique() + by_person["phone"].nunique()
    )
    busiest = messy.idxmax()  # the most systems and the most spellings of the same person
    mine = records[records["true_person_id"] == busiest]
    graph = graph_for(settings)
    table = Table(
        title=f"one person, {len(mine)} records in {mine['source'].nunique()} systems",
        caption="customer_id '-': identifiers shared with others (a household e-mail or "
        "landline) point to no one on their own",
    )
    for col in ("source", "first_name", "last_name", *ID_COLUMNS, "customer_id"):
        table.add_column(col, overflow="fold")
    resolved = None  # the first record that resolves to a customer
    for r in mine.itertuples(index=False):
        known = {c: getattr(r, c) for c in ID_COLUMNS if isinstance(getattr(r, c), str)}
        cid = graph.lookup(Identifiers(**known)) if known else None
        resolved = resolved or cid
        table.add_row(r.source, r.first_name, r.last_name,
                      *(getattr(r, c) or "" for c in ID_COLUMNS), cid or "-")  # fmt: skip
    console.print(table)
    if resolved is not None:
        profile = unified_profile(settings, resolved, store)
        row = {**profile["features"], **profile["basket"]}
        shown = ("plan", "arpu", "tenure_days", "purchases_90d", "visits_web_30d",
                 "email_open_rate_90d", "complaints_90d", "basket_items")  # fmt: skip
        console.print(
            f"unified profile of {profile['customer_id']}:", {k: row.get(k) for k in shown}
        )


def _train(settings: Settings, console: Console) -> dict[str, Any]:
    from training.train import train_model

    out = {}
    for model in ("churn", "propensity"):
        result = train_model(settings, model, promote=True, console=console)  # type: ignore[arg-type]
        promo = result.get("promotion", {})
        metrics = ", ".join(f"{k} {v}" for k, v in list(result["metrics"].items())[:5])
        console.print(
            f"{model}: {metrics}; promoted: {promo.get('promoted')} ({promo.get('reason')})"
        )
        out[model] = {"metrics": result["metrics"], "promoted": promo.get("promoted")}
    try:
        out["clv"] = _value_tiers(settings, console)
    except ValueError as exc:  # too few repeat buyers in a tiny world: the loop goes on
        console.print(f"clv: not trained ({exc})")
        out["clv"] = {"error": str(exc)}
    return out


def _value_tiers(settings: Settings, console: Console) -> dict[str, Any]:
    """CLV of the simulated base (both models, the better promoted) into profile_v2, and the
    value tiers it makes."""
    from datetime import UTC, datetime, timedelta

    from features.store import get_store
    from training.clv_world import train_clv

    result = train_clv(settings)
    end = datetime.now(UTC) + timedelta(days=3650)  # a simulated world may lie ahead
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        get_store(settings).materialize(end - timedelta(days=7300), end, ["customer_value"])
    mae = {v["model"]: v["mae_purchases"] for v in result["validation"]}
    tiers = "; ".join(
        f"{name} {t['size']:,} customers, mean 12-month value {t['mean']:,.0f}"
        for name, t in sorted(result["tiers"].items(), key=lambda kv: -kv[1]["mean"])
    )
    console.print(
        f"clv: validation MAE of purchase days {mae}; promoted: {result['chosen']}. "
        f"Value tiers: {tiers}"
    )
    return {"chosen": result["chosen"], "validation_mae": mae, "tiers": result["tiers"]}


def _replay(settings: Settings, console: Console, visits: int) -> dict[str, Any]:
    from benchmarks.replay import run_replay

    r = run_replay(settings, visits, retrain_every=max(1, visits // 4))
    console.print(
        f"per visit: learned {r.policy:.3f}, random {r.random:.3f}, best single offer "
        f"({r.best_single_offer}) {r.best_single:.3f}, oracle {r.oracle:.3f}: gap closed "
        f"{r.gap_closed:.2f}. Learning curve: {r.plot}"
    )
    return {"gap_closed": r.gap_closed, "plot": r.plot}


def _report(settings: Settings, console: Console) -> dict[str, Any]:
    from experiments.report_charts import write_report

    paths = write_report(settings, settings.reports_dir)
    console.print(f"marketers' report: {paths.get('html')} (numbers: {paths.get('json')})")
    return paths


def run_demo(
    settings: Settings, visits: int = 300, replay_visits: int = REPLAY_VISITS, keep: bool = False
) -> dict[str, Any]:
    """Simulate, resolve, featurise, train, serve, replay, report; returns a summary."""
    from simulator.world import simulate_world

    console = Console(width=max(Console().width, 120))
    import mlflow  # noqa: F401 - configures its loggers on import: quieten them after

    warnings.filterwarnings("ignore")  # library deprecation chatter, not the demo's story
    for name in ("mlflow", "alembic", "feast"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not keep:
        fresh_home(settings)
    settings.ensure_dirs()
    timings: dict[str, float] = {}
    out: dict[str, Any] = {"home": str(settings.home)}
    out["world"] = _stage(
        console, timings, "1. simulate the omnichannel world",
        lambda: simulate_world(customers=settings.customers, days=settings.days,
                               seed=settings.seed, out=settings.world_dir),
    )  # fmt: skip
    out["identity"] = _stage(
        console, timings, "2. resolve identities", lambda: _identities(settings, console)
    )
    out["features"] = _stage(
        console, timings, "3. features into Feast", lambda: _features(settings, console)
    )
    out["models"] = _stage(
        console, timings, "4. train, register, promote", lambda: _train(settings, console)
    )
    out["audiences"] = _stage(
        console, timings, "4b. segments and audiences",
        lambda: segments_and_audiences(settings, console),
    )  # fmt: skip
    out["serving"] = _stage(
        console, timings, "5. serve visits", lambda: serve_visits(settings, console, visits)
    )
    out["journeys"] = _stage(
        console, timings, "6. journeys: lift over their holdouts",
        lambda: journey_lifts(settings, console),
    )  # fmt: skip
    out["replay"] = _stage(
        console, timings, "7. bandit replay", lambda: _replay(settings, console, replay_visits)
    )
    out["report"] = _stage(console, timings, "8. report", lambda: _report(settings, console))
    out["seconds"] = timings
    console.rule("[bold]done")
    console.print(f"everything is under {settings.home}; report: {out['report'].get('html')}")
    return out
