"""The learner as a process of its own (``serving.learner_process``): it learns matured
decisions from a real SQLite ledger into a real VW policy and publishes it; a worker's
``PolicyFollower`` swaps the published policy in; the heartbeat drives ``/healthz``; one
learner per home. Then ``nextbest serve`` for real: a killed learner leaves /decide answering
with the last published policy and /healthz degraded, and is restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest

from nextbest.settings import PROJECT_ROOT, Settings
from record.tables import DecisionRow, OutcomeRow
from serving import learner_files as files
from serving.decide import DecideRequest, decide
from serving.deps import Deps
from serving.learner_process import LearnerBusy, LearnerProcess, hold_lock
from serving.policy_follow import PolicyFollower
from tests.serving.conftest import ADMIN, CHANNEL, real_deps
from training.bandit import BanditPolicy, offer_features

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
MIN = timedelta(minutes=1)
LATER = T0 + 3 * 60 * MIN  # every decision below has matured by then


def _policy(deps: Deps, version: str = "bandit:1") -> BanditPolicy:
    policy = BanditPolicy(offer_features(deps.catalog), version=version, epsilon=0.2)
    policy.trained_through = T0  # the champion learned everything up to T0
    return policy


def _learner_deps(settings: Settings, profiles: dict) -> Deps:
    """A learner's deps: one-hour reward wait, publish after 2 updates, a champion bandit:1."""
    settings = settings.model_copy(
        update={"bandit_reward_wait_minutes": 60.0, "request_timeout": 10,
                "learner_publish_updates": 2, "learner_publish_seconds": 3600.0}
    )  # fmt: skip
    deps = real_deps(settings, profiles)
    deps.bandit = _policy(deps)
    deps.clock = lambda: LATER
    return deps


def _decision(deps: Deps, tag: str, ts: datetime, value: float | None = None) -> None:
    """A logged treatment decision between two offers; with a conversion when ``value``."""
    probs = {"device_upgrade": 0.5, "data_addon": 0.5}
    deps.ledger.record_decision(
        DecisionRow(decision_id=tag, ts=ts, customer_id="c-post", channel="web",
                    context={"page": "home"}, experiment="nbo", arm="treatment",
                    offer_id="device_upgrade", propensity=0.5, probabilities=probs,
                    scores={"features": {"arpu": 45.0}, "value": dict.fromkeys(probs, 1.0)},
                    model_versions={})
    )  # fmt: skip
    if value is not None:
        row = OutcomeRow(idempotency_key=f"{tag}-conv", decision_id=tag, type="conversion",
                         value=value, ts=ts + 5 * MIN)  # fmt: skip
        assert deps.ledger.record_outcome(row)


@pytest.fixture
def ldeps(settings: Settings, profiles: dict) -> Deps:
    return _learner_deps(settings, profiles)


def test_the_learner_learns_matured_decisions_and_publishes(ldeps: Deps) -> None:
    lp = LearnerProcess(ldeps.settings, ldeps)
    assert lp.pending() == 1 and lp.due()  # a champion never published: published at once
    assert lp.publish().version == "bandit:1"
    _decision(ldeps, "a", T0 + MIN, value=180.0)
    _decision(ldeps, "b", T0 + 2 * MIN)
    _decision(ldeps, "young", LATER - 10 * MIN)  # its reward wait has not passed
    assert not lp.due()
    assert lp.tick(LATER) == "learned 2 matured decisions"
    assert lp.pending() == 2 and lp.due()  # learner_publish_updates reached
    manifest = lp.publish()
    assert manifest is not None and (manifest.seq, manifest.version) == (2, "bandit:1+2")
    assert files.read_manifest(ldeps.settings) == manifest
    assert manifest.trained_through == T0 + 2 * MIN and manifest.watermark_ids == ["b"]
    assert (files.folder(ldeps.settings) / manifest.model).is_file()
    assert not lp.due() and lp.tick(LATER) is None  # nothing new: learned once
    _decision(ldeps, "c", T0 + 3 * MIN)
    assert lp.tick(LATER) == "learned 1 matured decisions"
    assert lp.pending() == 1 and not lp.due()  # one update waits for the publish interval
    lp.settings = lp.settings.model_copy(update={"learner_publish_seconds": 1e-6})
    assert lp.due() and lp.publish().version == "bandit:1+3"
    assert sorted(p.name for p in files.folder(ldeps.settings).glob("policy-*.vw")) == [
        "policy-1.vw", "policy-2.vw", "policy-3.vw",
    ]  # fmt: skip
    lp.publish()  # a fourth: only the last three files are kept
    names = sorted(p.name for p in files.folder(ldeps.settings).glob("policy-*.vw"))
    assert names == ["policy-2.vw", "policy-3.vw", "policy-4.vw"]


def test_a_worker_swaps_in_the_published_policy(ldeps: Deps, settings: Settings) -> None:
    """The worker's decisions record the published version, and its policy answers exactly as
    the learner's does; an unchanged manifest costs a stat and swaps nothing."""
    lp = LearnerProcess(ldeps.settings, ldeps)
    _decision(ldeps, "a", T0 + MIN, value=180.0)
    _decision(ldeps, "b", T0 + 2 * MIN, value=40.0)
    lp.tick(LATER)
    worker = real_deps(ldeps.settings, {"c-post": {"plan": "postpaid_m", "arpu": 45.0}})
    worker.bandit = _policy(worker)
    worker.clock = lambda: LATER
    follower = worker.learner = PolicyFollower(worker)
    request = DecideRequest(customer_id="c-post", channel="web")
    assert decide(request, worker).model_versions["bandit"] == "bandit:1"
    assert asyncio.run(follower.follow_once()) is None  # nothing published yet
    lp.publish()
    assert asyncio.run(follower.follow_once()) == "bandit now the published bandit:1+2"
    response = decide(request, worker)
    assert response.model_versions["bandit"] == "bandit:1+2"
    assert worker.ledger.decision(response.decision_id).model_versions["bandit"] == "bandit:1+2"
    args = ({"arpu": 45.0}, "web", {"page": "home"}, ["device_upgrade", "data_addon"])
    assert worker.bandit.distribution(*args) == ldeps.bandit.distribution(*args)
    assert asyncio.run(follower.follow_once()) is None
    assert follower.state()["following"] == "bandit:1+2"


def test_a_manifest_of_a_bandit_no_longer_promoted_is_not_followed(ldeps: Deps) -> None:
    LearnerProcess(ldeps.settings, ldeps).publish()  # grew from bandit:1, never promoted
    worker = real_deps(ldeps.settings, {})
    serving = worker.bandit = _policy(worker, version="bandit:2")
    follower = PolicyFollower(worker)
    assert asyncio.run(follower.follow_once()) is None and worker.bandit is serving


def test_a_restarted_learner_resumes_from_what_it_published(ldeps: Deps) -> None:
    lp = LearnerProcess(ldeps.settings, ldeps)
    _decision(ldeps, "a", T0 + MIN, value=180.0)
    _decision(ldeps, "b", T0 + 2 * MIN)
    lp.tick(LATER)
    lp.publish()
    again = _learner_deps(ldeps.settings, {})  # loads the champion, bandit:1, as a restart does
    restarted = LearnerProcess(again.settings, again)
    assert again.bandit.version == "bandit:1+2" and restarted.pending() == 0
    assert again.learner.ts == T0 + 2 * MIN and again.learner.ids == {"b"}
    assert restarted.tick(LATER) is None  # nothing learned twice
    _decision(ldeps, "c", T0 + 3 * MIN)
    assert restarted.tick(LATER) == "learned 1 matured decisions"
    assert restarted.publish().version == "bandit:1+3"


@pytest.mark.parametrize(
    ("beat", "problem"),
    [
        (None, None),
        ({"status": "running", "age": 1.0}, None),
        ({"status": "stopped", "age": 600.0}, None),
        ({"status": "running", "age": 30.0}, "learner process silent for 30 s (pid 4242)"),
        ({"status": "dead", "age": 2.0, "why": "killed by signal 9; restart 1 in 1 s"},
         "learner process dead: killed by signal 9; restart 1 in 1 s"),
    ],
)  # fmt: skip
def test_healthz_reports_the_learner(deps: Deps, beat: dict | None, problem: str | None) -> None:
    deps.clock = lambda: LATER
    deps.learner = PolicyFollower(deps)
    deps.missing.clear()  # every other part up: the learner alone decides the status
    if beat is not None:
        at = LATER - timedelta(seconds=beat["age"])
        files.write_heartbeat(deps.settings, files.Heartbeat(
            pid=4242, status=beat["status"], at=at, started_at=at, last_error=beat.get("why")
        ))  # fmt: skip
    body = deps.health()
    assert body["parts"].get("learner") == problem
    assert body["status"] == ("degraded" if problem else "ok")
    learner = body["bandit_learner"]
    assert learner["status"] == (beat["status"] if beat else "off")
    if beat:
        assert learner["heartbeat_age_s"] == beat["age"] and learner["pid"] == 4242


def test_a_supervisor_notes_only_its_own_learner_s_death(settings: Settings) -> None:
    at = LATER
    files.write_heartbeat(settings, files.Heartbeat(pid=1, status="running", at=at, started_at=at))
    assert not files.note_death(settings, 2, "exited with code 3", at)  # another live learner
    assert files.read_heartbeat(settings).status == "running"
    assert files.note_death(settings, 1, "killed by signal 9", at + MIN)
    beat = files.read_heartbeat(settings)
    assert (beat.status, beat.last_error, beat.at) == ("dead", "killed by signal 9", at)


def test_one_learner_per_home(settings: Settings) -> None:
    """The lock in process, then a real second learner process: it exits 3, saying why."""
    held = hold_lock(settings)
    try:
        with pytest.raises(LearnerBusy, match="another learner holds .*learner.lock"):
            hold_lock(settings)
        env = {**os.environ, "NEXTBEST_HOME": str(settings.home), "PYTHONPATH": str(PROJECT_ROOT)}
        second = subprocess.run(
            [sys.executable, "-m", "serving.learner_process"],
            env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 3, second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith("error: another learner holds")
    finally:
        held.close()
    hold_lock(settings).close()  # free again once the holder let go


def _admin_health(client: httpx.Client) -> dict:
    return client.get("/healthz", headers=ADMIN).json()


def _until(what: str, check, timeout: float = 60.0, every: float = 0.1):  # noqa: ANN001, ANN202
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last})")


@pytest.mark.slow
def test_nextbest_serve_survives_its_learner(tmp_path: Path) -> None:
    """Real processes: ``nextbest serve`` (bentoml serve, 2 workers, and the learner). An
    outcome is learned and published, and the workers' decisions record the new version; the
    learner SIGKILLed: /decide answers with the last published policy, /healthz is degraded
    naming the learner, the supervisor restarts it; SIGTERM stops all of them."""
    from benchmarks.decide import prepare_features
    from offers.catalog import load_catalog
    from serving.run import free_port, server_env
    from training.bandit_registry import to_bentoml

    settings = Settings(home=tmp_path, workers=2).ensure_dirs()
    prepare_features(settings, customers=5)  # bench000004 may see data_addon, streaming, none
    to_bentoml(settings, BanditPolicy(offer_features(load_catalog()), epsilon=0.2), "1")
    env = server_env(
        settings,
        NEXTBEST_BANDIT_REWARD_WAIT_MINUTES="0", NEXTBEST_BANDIT_LEARN_EVERY_SECONDS="0.2",
        NEXTBEST_LEARNER_PUBLISH_SECONDS="0.2", NEXTBEST_REQUEST_TIMEOUT="2",
        NEXTBEST_GLOBAL_HOLDOUT_SHARE="0", NEXTBEST_EXPERIMENT_HOLDOUT_SHARE="0",
    )  # fmt: skip
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    serve = subprocess.Popen(
        [sys.executable, "-m", "nextbest.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    tail = lambda: (tmp_path / "serve.log").read_text()[-3000:]  # noqa: E731
    body = {"customer_id": "bench000004", "channel": "web"}
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=CHANNEL, timeout=10)
        _until("ready", lambda: _ready(client), timeout=120)
        first = client.post("/decide", json=body).json()
        assert first["model_versions"]["bandit"] == "bandit:1", first
        out = {"idempotency_key": "k1", "decision_id": first["decision_id"],
               "type": "conversion", "value": 40.0}  # fmt: skip
        assert client.post("/outcome", json=out).status_code == 200
        # learned by the learner process, published, swapped in by the workers
        learned = _until(
            "a decision recording the learned version",
            lambda: (
                (
                    v := client.post("/decide", json=body).json()["model_versions"]["bandit"]
                ).startswith("bandit:1+")
                and v
            ),
        )
        health = _admin_health(client)
        assert "learner" not in health["parts"], health  # (no churn/uplift models: degraded)
        pid = health["bandit_learner"]["pid"]
        assert health["bandit_learner"]["status"] == "running" and psutil.pid_exists(pid)

        os.kill(pid, signal.SIGKILL)
        degraded = lambda: "learner" in (h := _admin_health(client))["parts"] and h  # noqa: E731
        down = _until("degraded", degraded)
        assert down["parts"]["learner"] == (
            "learner process dead: killed by signal 9; restart 1 in 1 s"
        ), down
        assert down["status"] == "degraded"
        assert down["bandit_learner"]["last_error"].startswith("killed by signal 9")
        unauthenticated = client.get("/healthz", headers={}).json()  # the channel key
        assert unauthenticated["parts"]["learner"] == "unavailable"
        still = client.post("/decide", json=body).json()  # the last published policy decides
        assert still["model_versions"]["bandit"].startswith("bandit:1+"), still
        assert int(still["model_versions"]["bandit"].split("+")[1]) >= int(learned.split("+")[1])

        back = _until(
            "restarted",
            lambda: (
                "learner" not in (h := _admin_health(client))["parts"]
                and h["bandit_learner"].get("pid") != pid
                and h
            ),
        )
        new_pid = back["bandit_learner"]["pid"]
        assert back["bandit_learner"]["status"] == "running"

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) is not None
        assert not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == "zombie"
        assert files.read_heartbeat(settings).status == "stopped"
    except BaseException:
        print(tail())
        raise
    finally:
        from serving.run import stop

        stop(serve)
        log.close()


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False
