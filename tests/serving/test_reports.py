"""The report is built in a process of its own and served from the home (issue 15, item 9):
a worker never builds one, ``GET /reports`` answers at once with the last build (or says one
is being built), and an admin's ``POST /reports/refresh`` starts a build."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from nextbest.settings import Settings
from serving import admin, reports
from serving.decide import DecideRequest, decide
from serving.deps import Deps
from tests.serving.conftest import ADMIN, CHANNEL


@pytest.fixture
def app(deps: Deps) -> Iterator[TestClient]:
    """The admin routes over this test's own home (no key guard: the session client has it)."""
    with TestClient(Starlette(routes=admin.routes(lambda: deps))) as c:
        yield c


def _no_build_here(*args: object, **kwargs: object) -> None:
    raise AssertionError("a report was built on the worker")


def test_reports_never_built_on_the_worker(
    app: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: GET /reports built the report in the worker (1-10 s of its CPU a call)."""
    import experiments.report
    import experiments.report_charts

    monkeypatch.setattr(experiments.report, "build_report", _no_build_here)
    monkeypatch.setattr(experiments.report_charts, "report_html", _no_build_here)
    monkeypatch.setattr(experiments.report_charts, "build_report", _no_build_here)
    for fmt in ("html", "json"):
        r = app.get("/reports", params={"format": fmt})
        assert r.status_code == 503, r.text
        assert r.json() == {
            "error": "report: not built yet; an admin can POST /reports/refresh",
            "field": "report",
        }


def test_reports_say_a_build_is_under_way(app: TestClient, settings: Settings) -> None:
    with reports.build_lock(settings) as mine:
        assert mine  # as the build process holds it
        r = app.get("/reports")
    assert r.status_code == 503 and r.headers["retry-after"] == "30"
    assert r.json() == {"error": "report: being built; try again shortly", "field": "report"}


def test_reports_serve_the_last_build(app: TestClient, settings: Settings) -> None:
    folder = settings.reports_dir
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html>last build</html>")
    (folder / "report.json").write_text('{"n_units": 3}')
    built = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    os.utime(folder / "report.html", (built, built))
    html = app.get("/reports")
    assert html.status_code == 200 and html.text == "<html>last build</html>"
    assert html.headers["content-type"].startswith("text/html")
    assert html.headers["x-report-built-at"] == "2030-01-02T03:04:05+00:00"
    numbers = app.get("/reports", params={"format": "json"})
    assert numbers.status_code == 200 and numbers.json() == {"n_units": 3}


def test_a_failed_build_is_a_404_with_its_reason(app: TestClient, settings: Settings) -> None:
    reports.write_status(settings, {"error": "no decisions in the ledger yet", "finished_at": 1.0})
    r = app.get("/reports")
    assert (r.status_code, r.json()) == (
        404,
        {"error": "report: no decisions in the ledger yet", "field": "report"},
    )


def _decide(deps: Deps, n: int) -> None:
    for i in range(n):
        decide(DecideRequest(customer_id=f"report-{i}", channel="web"), deps)


def test_refresh_builds_in_a_process_of_its_own(
    app: TestClient, deps: Deps, settings: Settings
) -> None:
    """End to end: the route starts ``python -m serving.reports``, which writes the files the
    route then serves; the worker's process never imports the report's charts."""
    _decide(deps, 3)
    r = app.post("/reports/refresh")
    assert r.status_code == 202, r.text
    assert r.json()["started"] is True
    deadline = time.monotonic() + 120
    while (served := app.get("/reports")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert served.status_code == 200, served.text
    assert "<html" in served.text.lower() and served.headers["x-report-built-at"]
    numbers = app.get("/reports", params={"format": "json"}).json()
    assert numbers["n_units"] >= 1
    status = reports.read_status(settings)
    assert status["error"] is None and status["pid"] != os.getpid()


@pytest.mark.parametrize(
    ("status", "report_age_minutes", "every", "due"),
    [
        (None, None, 15.0, True),  # nothing built, nothing tried
        (None, 1.0, 15.0, False),  # a report (say `nextbest report`) a minute old
        (None, 20.0, 15.0, True),
        ({"finished_at_minutes_ago": 5.0}, None, 15.0, False),  # failed 5 minutes ago
        ({"finished_at_minutes_ago": 16.0}, None, 15.0, True),
        (None, None, 0.0, False),  # the schedule is off: admins refresh by hand
    ],
)
def test_when_a_scheduled_build_is_due(
    tmp_path: Path,
    status: dict | None,
    report_age_minutes: float | None,
    every: float,
    due: bool,
) -> None:
    settings = Settings(home=tmp_path, report_every_minutes=every)
    now = time.time()
    if status is not None:
        ago = status["finished_at_minutes_ago"] * 60
        reports.write_status(settings, {"error": "x", "finished_at": now - ago})
    if report_age_minutes is not None:
        settings.reports_dir.mkdir(parents=True, exist_ok=True)
        path = settings.reports_dir / "report.json"
        path.write_text("{}")
        then = now - report_age_minutes * 60
        os.utime(path, (then, then))
    assert reports.due(settings, now) is due


def test_refresh_needs_an_admin_key(client: TestClient) -> None:
    r = client.post("/reports/refresh", headers=CHANNEL)
    assert (r.status_code, r.json()["error"]) == (
        403,
        "X-API-Key: /reports/refresh needs an admin key",
    )
    assert client.get("/reports/refresh", headers=ADMIN).status_code == 405


def test_service_reports_answer_at_once(client: TestClient) -> None:
    """Through the real service (keys, worker): an answer in well under a build's time, with
    the error shape when there is nothing to serve yet."""
    t0 = time.perf_counter()
    r = client.get("/reports", params={"format": "json"}, headers=CHANNEL)
    assert time.perf_counter() - t0 < 2.0
    if r.status_code != 200:
        assert r.status_code in (404, 503) and r.json()["field"] == "report", r.text
    else:
        assert "n_units" in json.loads(r.text)
