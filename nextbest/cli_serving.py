"""Serving commands: run the decision service, build its Bento, erase a person, benchmark
/decide, soak the service and time it through store faults."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from nextbest.cli_common import JsonFlag, console, emit, fail
from nextbest.settings import development_secrets_error, get_settings

# nextbest.cli registers these commands on the root app and `bench`.


def serve(
    port: Annotated[int | None, typer.Option(help="HTTP port (default: settings.port)")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
    journeys: Annotated[
        bool,
        typer.Option(
            "--journeys/--no-journeys",
            help="run due journey steps beside the service (default: journey_runner)",
        ),
    ] = True,
    learner: Annotated[
        bool,
        typer.Option(
            "--learner/--no-learner",
            help="run the online learner process beside the workers (restarted if it dies)",
        ),
    ] = True,
) -> None:
    """Run the decision service (bentoml serve) on NEXTBEST_HOST (127.0.0.1) until interrupted;
    another host needs salts and keys of your own. A journey runner runs in each worker
    unless ``--no-journeys``; one learner process beside them unless ``--no-learner``."""
    from serving.learner_supervisor import serve_foreground
    from serving.run import server_cmd, server_env

    s = get_settings()
    if workers is not None and workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    if refused := development_secrets_error(s, s.host):
        fail(refused)
    s.ensure_dirs()
    extra = {"NEXTBEST_WORKERS": str(workers or s.workers)}
    if not journeys:
        extra["NEXTBEST_JOURNEY_RUNNER"] = "false"
    env = server_env(s, **extra)
    cmd = server_cmd("serving.service:Nextbest", port or s.port, s.host)
    console.print(f"serving on http://{s.host}:{port or s.port} ({workers or s.workers} workers)")
    raise typer.Exit(serve_foreground(s, cmd, env, learner=learner))


def bento(as_json: JsonFlag = False) -> None:
    """Build the service into a Bento carrying the promoted models (`bentoml containerize`
    makes an image of it)."""
    from serving.bento import BentoBuildError, build_bento

    s = get_settings().ensure_dirs()
    try:
        emit(build_bento(s), as_json)
    except BentoBuildError as exc:
        fail(str(exc))


def erase(
    customer_id: Annotated[str | None, typer.Argument(help="the person's customer id")] = None,
    resume: Annotated[
        bool, typer.Option(help="finish every erasure a failure or crash left pending")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Erase a person from every store (what POST /erase does), or finish pending erasures."""
    from serving import erasure
    from serving.deps import load_deps

    if (customer_id is None) == (not resume):
        fail("give a CUSTOMER_ID or --resume (one of them)")
    deps = load_deps(get_settings().ensure_dirs(), models=None, bandit=None)
    results = erasure.resume_pending(deps) if resume else [erasure.erase(customer_id, deps)]
    emit({"resumed": results} if resume else results[0], as_json)
    left = [r for r in results if r["status"] != "done"]
    if left:  # what is left is in the result above; a later --resume finishes it
        errors = "; ".join(f"{r['request_id']}: {r['error']}" for r in left)
        print(f"error: erasure partial ({errors}); run `nextbest erase --resume`", file=sys.stderr)
        raise typer.Exit(1)


def bench_decide_cmd(
    seconds: Annotated[float, typer.Option(help="seconds per load level")] = 5.0,
    concurrency: Annotated[list[int] | None, typer.Option(help="closed-loop connections")] = None,
    workers: Annotated[int | None, typer.Option(help="server worker processes")] = None,
    use_home: Annotated[
        bool, typer.Option(help="bench the home as it is (promoted models) instead of a fresh one")
    ] = False,
    adaptive: Annotated[
        bool, typer.Option(help="also /decide's pipeline behind BentoML's adaptive batching")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """/decide vs an empty BentoML endpoint: sequential, closed-loop and open-loop figures.

    By default a fresh home with a real Feast store of synthetic customers is used."""
    from benchmarks.decide import bench_decide

    if seconds <= 0 or seconds > 30:
        fail(f"--seconds must be in (0, 30], got {seconds}")
    if concurrency and min(concurrency) < 1:
        fail(f"--concurrency must be >= 1, got {min(concurrency)}")
    if workers is not None and workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    s = get_settings().ensure_dirs() if use_home else None
    emit(bench_decide(s, concurrency or None, seconds, workers=workers, adaptive=adaptive), as_json)


def _counts(text: str, option: str) -> list[int]:
    """``--sizes 100000,1000000``: positive whole numbers, or one line naming the option."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{option}: expected whole numbers separated by commas, got {text!r}")
    if not values or min(values) < 1:
        fail(f"{option}: expected numbers >= 1, got {text!r}")
    return values


def bench_batch_cmd(
    customers: Annotated[
        int, typer.Option(help="customers decided in process and over HTTP")
    ] = 100_000,
    sizes: Annotated[
        str | None,
        typer.Option(
            help="populations run whole, each in its own process, e.g. 100000,1000000 "
            "(default: --customers)"
        ),
    ] = None,
    batches: Annotated[str, typer.Option(help="plan_many batch sizes")] = "1,100,1000",
    per_batch: Annotated[int, typer.Option(help="customers decided at each batch size")] = 5000,
    http_decisions: Annotated[int, typer.Option(help="decisions through /decide/batch")] = 5000,
    channel: Annotated[str, typer.Option(help="the decisions' channel")] = "email",
    as_json: JsonFlag = False,
) -> None:
    """Decisions/s of plan_many in process and of POST /decide/batch against a floor of the
    same feature reads, stage times, and run time and peak memory of whole populations."""
    import json
    from typing import get_args

    from benchmarks.batch import batch_tables, bench_batch
    from features.schema import Channel

    if customers < 1:
        fail(f"--customers: expected >= 1, got {customers}")
    if per_batch < 1 or http_decisions < 1:
        fail(f"--per-batch and --http-decisions: expected >= 1, got {per_batch}, {http_decisions}")
    if channel not in get_args(Channel):
        fail(f"--channel: {channel!r} is not one of {', '.join(get_args(Channel))}")
    sizes_ = _counts(sizes, "--sizes") if sizes else [customers]
    batches_ = _counts(batches, "--batches")
    if max(batches_) > customers:
        fail(f"--batches: {max(batches_)} is more than --customers {customers}")
    result = bench_batch(customers, sizes_, batches_, per_batch, http_decisions, channel)
    for table in batch_tables(result):
        console.print(table)
    if as_json:
        print(json.dumps(result, default=str))


def bench_soak_cmd(
    minutes: Annotated[float, typer.Option(help="how long the load runs")] = 5.0,
    rate: Annotated[float, typer.Option(help="requests a second (Poisson arrivals)")] = 100.0,
    customers: Annotated[int, typer.Option(help="synthetic customers the load picks from")] = 1000,
    workers: Annotated[int | None, typer.Option(help="server worker processes")] = None,
    use_home: Annotated[
        bool, typer.Option(help="soak the home as it is instead of a fresh one")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """A constant rate of mixed requests (decide, outcome, events, profile) from a separate
    process: per-minute p50/p99, errors, the workers' RSS and its slope after warm-up."""
    import json

    from benchmarks.soak import bench_soak

    if not 0 < minutes <= 24 * 60:
        fail(f"--minutes must be in (0, 1440], got {minutes}")
    if rate <= 0:
        fail(f"--rate must be > 0, got {rate}")
    if customers < 1:
        fail(f"--customers must be >= 1, got {customers}")
    if workers is not None and workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    s = get_settings().ensure_dirs() if use_home else None
    result = bench_soak(s, minutes, rate, customers, workers)
    console.print(soak_table(result))
    if as_json:
        print(json.dumps(result, default=str))


def soak_table(result: dict) -> Table:
    """One row a window: its p50/p99, errors and the workers' RSS; the totals in the title."""
    slope = result["rss_slope_mib_per_min"]
    title = (
        f"Soak: {result['requests']} requests at {result['rps']}/s, {result['errors']} errors; "
        f"RSS slope after {result['warmup_excluded_seconds'] / 60:.1f} min warm-up: "
        f"{'-' if slope is None else f'{slope:+.3f}'} MiB/min; p99 max step "
        f"{result['p99_max_step']}"
    )
    table = Table(title=title)
    for col in ("from (s)", "requests", "errors", "p50 ms", "p99 ms", "RSS MiB"):
        table.add_column(col, justify="right")
    for w in result["windows"]:
        table.add_row(f"{w['start_s']:.0f}", str(w["requests"]), str(w["errors"]),
                      f"{w['p50_ms']:.2f}", f"{w['p99_ms']:.2f}", str(w["rss_mib"]))  # fmt: skip
    return table


def bench_faults_cmd(
    seconds: Annotated[float, typer.Option(help="seconds of load in each phase")] = 8.0,
    as_json: JsonFlag = False,
) -> None:
    """/decide with Redis up, hung and refusing (1 and 4 clients) and with PostgreSQL hung,
    each through a proxy in front of the machine's server: p50/p99 against the healthy p99,
    fallback share, non-2xx, recovery time, acknowledged decisions missing. Needs both."""
    import json

    from benchmarks.faults import bench_faults, servers_missing

    if not 0 < seconds <= 60:
        fail(f"--seconds must be in (0, 60], got {seconds}")
    if missing := servers_missing():
        fail(f"{missing}; bench faults needs Redis and PostgreSQL on this machine")
    result = bench_faults(seconds)
    for table in faults_tables(result):
        console.print(table)
    if as_json:
        print(json.dumps(result, default=str))


def faults_tables(result: dict) -> list[Table]:
    """Redis: one row a state and client count; PostgreSQL hung: one row. Ratios are to the
    healthy (Redis up) p99 of the same run at the same client count."""
    met = ", ".join(f"{goal} {'yes' if ok else 'NO'}" for goal, ok in result["goals"].items())
    redis = Table(title=f"Faults, {result['seconds']:g} s a phase: {met}")
    for col in ("Redis", "clients", "requests", "p50 ms", "p99 ms", "p99 / healthy",
                "fallback share", "non-2xx", "recovery s"):  # fmt: skip
        redis.add_column(col, justify="right")
    for clients, by_mode in result["redis"].items():
        for mode, f in by_mode.items():
            ratio, back = f.get("p99_vs_healthy"), f.get("recovery_s", "")
            redis.add_row(mode, clients, str(f["requests"]), f"{f['p50_ms']:.1f}",
                          f"{f['p99_ms']:.1f}", "1 (floor)" if ratio is None else f"{ratio:.2f}",
                          f"{f['fallback_share']:.3f}", str(f["non_2xx"]),
                          "-" if back is None else str(back))  # fmt: skip
    tables = [redis]
    pg = result.get("postgres")
    if pg is not None:
        ledger = Table(title=f"PostgreSQL hung {pg['hung_seconds']:g} s, {pg['clients']} clients")
        for col in ("first 503 s", "503s after it", "their p99 ms", "p99 / healthy",
                    "recovery s", "acknowledged", "missing"):  # fmt: skip
            ledger.add_column(col, justify="right")
        ledger.add_row(*(str("-" if pg.get(k) is None else pg[k]) for k in (
            "first_503_s", "after_first_503s", "p99_503_ms", "p99_503_vs_healthy",
            "recovery_s", "acknowledged", "missing")))  # fmt: skip
        tables.append(ledger)
    return tables


def bench_console_cmd(
    requests: Annotated[int, typer.Option(min=10, help="requests per route")] = 200,
    others: Annotated[
        int, typer.Option(min=0, help="other customers' decisions in the same ledger")
    ] = 50_000,
    as_json: JsonFlag = False,
) -> None:
    """The console's customer page for a customer with a year of history (events, decisions,
    outcomes): server time p50/p95 in process, against an empty route of the same app."""
    from benchmarks.console import bench_console

    out = bench_console(requests, others=others)
    t = Table(title=f"console, {out['history']['events']:,} events in a year, in process")
    for col in ("route", "p50 ms", "p95 ms", "mean ms"):
        t.add_column(col)
    for name in ("page", "live", "floor"):
        s = out[name]
        t.add_row(name, f"{s['p50_ms']:.2f}", f"{s['p95_ms']:.2f}", f"{s['mean_ms']:.2f}")
    console.print(t)
    console.print(
        f"page p95 {out['page']['p95_ms']:.1f} ms = floor + {out['page_p95_minus_floor_ms']:.1f}"
        f" ms ({out['page_p95_over_floor']:.1f}x the empty route); target < 100 ms"
    )
    if as_json:
        emit(out, as_json)
