"""The edge of a real ``bentoml serve`` (issue 15, items 5, 10, 11 and the fuzz run): the
table of malformed bodies over HTTP, one log line per bad request, then a bounded
schemathesis run against the served OpenAPI document: no server error, every response as
documented (status, content type, body schema), malformed requests refused, no route open
without a key.

The run is seeded and bounded (``FUZZ_EXAMPLES`` per operation, about a minute on two cores);
``NEXTBEST_FUZZ_EXAMPLES`` raises it for a longer local run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nextbest.settings import Settings
from serving import run
from tests.serving.conftest import ADMIN, CHANNEL
from tests.serving.test_auth import BAD_BODIES, post_raw

FUZZ_EXAMPLES = int(os.environ.get("NEXTBEST_FUZZ_EXAMPLES", "60"))
SEED = 15
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "ignored_auth",
    "unsupported_method",
)
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


class Served:
    def __init__(self, base: str, log: Path) -> None:
        self.base, self.log = base, log


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """An empty home served on 127.0.0.1: nothing promoted, no features (fallback decisions).
    Its start-up report build is waited for: until it ends, ``/reports`` is a documented 503
    (being built), which the fuzz run's server-error check would count."""
    home = tmp_path_factory.mktemp("fuzz_home")
    log = home / "server.log"
    with run.served(Settings(home=home, workers=1), log=log) as base:
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/reports", headers=CHANNEL, timeout=30).status_code == 503:
            assert time.monotonic() < deadline, "the start-up report build never ended"
            time.sleep(0.5)
        yield Served(base, log)


@pytest.mark.slow
def test_malformed_bodies_over_http_are_refused_with_the_problem_named(served: Served) -> None:
    with httpx.Client(base_url=served.base, timeout=30) as http:
        got = [
            (path, post_raw(http.request, path, headers, kind, body))
            for path, headers, kind, body, _, _ in BAD_BODIES
        ]
    wrong = [
        f"{path}: {r.status_code} {r.text[:200]}"
        for (path, r), (*_, status, error) in zip(got, BAD_BODIES, strict=True)
        if (r.status_code, r.json().get("error")) != (status, error)
    ]
    assert wrong == []


@pytest.mark.slow
def test_the_server_log_has_one_warning_line_per_bad_request(served: Served) -> None:
    """No traceback for a caller's mistake (2 KB each before), and no dependency's
    deprecation warning in the served process."""
    with httpx.Client(base_url=served.base, timeout=30, headers=CHANNEL) as http:
        assert http.post("/decide", json={"channel": "fax"}).status_code == 400
        assert http.post("/outcome", json={"type": "click"}).status_code == 400
    text = served.log.read_text()
    assert "Traceback" not in text and "Exception on" not in text, text[-3000:]
    assert "DeprecationWarning" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if "bad request POST" in line]
    assert len(lines) == len(BAD_BODIES) + 2, text[-3000:]
    assert "[WARNING]" in lines[-1] and "/outcome -> 400 field=idempotency_key" in lines[-1]


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_nothing_undocumented(
    served: Served, tmp_path: Path
) -> None:
    assert shutil.which(str(SCHEMATHESIS)), "pip install -e '.[fuzz]' (make setup does)"
    report = tmp_path / "report"
    cmd = [
        str(SCHEMATHESIS),
        "run",
        f"{served.base}/docs.json",
        "--header",
        f"X-API-Key: {ADMIN['X-API-Key']}",  # every route; ignored_auth drops it to check 401s
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        "--output-truncate",
        "true",
        "--report",
        "junit",
        "--report-dir",
        str(report),
    ]
    env = {**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"}
    out = subprocess.run(  # in tmp_path: it keeps a .schemathesis/ cache in its folder
        cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )
    assert out.returncode == 0, out.stdout[-12_000:] + out.stderr[-2000:]
