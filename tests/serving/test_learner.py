"""The service's incremental bandit updates (``serving.learner``): a real SQLite ledger, a real
VW policy, the batch path's rewards; then a real ``bentoml serve`` learning as outcomes arrive."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from benchmarks.replay_harness import Recorder
from nextbest.settings import Settings
from record.tables import DecisionRow, OutcomeRow
from serving import learner
from serving.actions import OutcomeRequest, record_outcome
from serving.decide import DecideRequest, decide
from serving.deps import Deps
from serving.learner import Learner, learn_matured
from tests.serving.conftest import ADMIN, CHANNEL
from training.bandit import BanditPolicy, offer_features
from training.bandit_ledger import logged_examples

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
MIN = timedelta(minutes=1)
PAIR = ("device_upgrade", "data_addon")


class Spy(BanditPolicy):
    """The real policy, remembering which decisions (by their ``tag`` feature) it learned and
    with which reward."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, float]] = []

    def learn(self, *args: Any) -> None:  # features, ..., reward, scores: as BanditPolicy's
        super().learn(*args)
        self.seen.append((args[0].get("tag", "?"), args[6]))


def _spy(deps: Deps, version: str = "untrained") -> Spy:
    return Spy(offer_features(deps.catalog), version=version, exploration="epsilon", epsilon=0.2)


@pytest.fixture
def ldeps(deps: Deps) -> Deps:
    """The shared test deps with a one-hour reward wait, a spying policy and a learner that
    started at T0."""
    deps.settings = deps.settings.model_copy(
        update={"bandit_reward_wait_minutes": 60.0, "request_timeout": 10}
    )
    deps.bandit = _spy(deps)
    deps.learner = Learner(start=T0)
    return deps


def _decision(
    deps: Deps,
    tag: str,
    ts: datetime,
    offer: str = "device_upgrade",
    allowed: tuple[str, ...] = PAIR,
    arm: str = "treatment",
    customer: str | None = "c-post",
    snapshot: bool = True,
) -> str:
    probs = dict.fromkeys(allowed, 1 / len(allowed)) if arm == "treatment" else {}
    scores = {"features": {"arpu": 45.0, "tag": tag}, "value": dict.fromkeys(allowed, 1.0)}
    deps.ledger.record_decision(
        DecisionRow(decision_id=tag, ts=ts, customer_id=customer, channel="web",
                    context={"page": "home"}, experiment="nbo", arm=arm,
                    offer_id=offer if probs else None, propensity=probs.get(offer),
                    probabilities=probs, scores=scores if snapshot else {}, model_versions={})
    )  # fmt: skip
    return tag


def _outcome(
    deps: Deps, key: str, ts: datetime, kind: str, value: float, decision: str | None = None,
    customer: str | None = None,
) -> None:  # fmt: skip
    row = OutcomeRow(idempotency_key=key, decision_id=decision, customer_id=customer, type=kind,
                     value=value, ts=ts)  # fmt: skip
    assert deps.ledger.record_outcome(row)


def _costs(deps: Deps) -> dict[str, float]:
    return {o.id: float(o.cost) for o in deps.offers()}


def test_the_conversion_reward_counts_the_offers_own_conversion_only(ldeps: Deps) -> None:
    d = ldeps
    d.settings = d.settings.model_copy(update={"bandit_reward": "conversion"})
    _decision(d, "a", T0 + MIN)
    _outcome(d, "a-conv", T0 + 20 * MIN, "conversion", 180.0, decision="a")
    _outcome(d, "a-rev", T0 + 25 * MIN, "revenue", 20.0, decision="a")  # other spending
    _outcome(d, "c-rev", T0 + 30 * MIN, "revenue", 9.0, customer="c-post")
    assert learn_matured(d, T0 + 2 * 60 * MIN) == 1
    assert d.bandit.seen == [("a", 180.0 - 40.0)]  # device_upgrade's cost is 40
    batch = logged_examples(
        d.ledger.logs(), d.ledger.outcomes_frame(), _costs(d), 1 / 24, "conversion"
    )
    assert batch["reward"].tolist() == [140.0]


def test_each_matured_decision_is_learned_once_with_the_batch_reward(ldeps: Deps) -> None:
    d = ldeps
    _decision(d, "early", T0 - MIN)  # before the service started: the batch retrain's
    _decision(d, "a", T0 + MIN)
    _outcome(d, "a-conv", T0 + 20 * MIN, "conversion", 180.0, decision="a")
    _outcome(d, "a-click", T0 + 5 * MIN, "click", 1.0, decision="a")  # not a reward
    _outcome(d, "post-rev", T0 + 30 * MIN, "revenue", 20.0, customer="c-post")  # other spending
    _decision(d, "b", T0 + 2 * MIN, offer="data_addon", customer="c-pre")
    _outcome(d, "pre-rev", T0 + 10 * MIN, "revenue", 5.0, customer="c-pre")
    # b's conversion came 70 minutes after it, past the one-hour wait: not counted, no cost
    _outcome(d, "b-conv", T0 + 72 * MIN, "conversion", 40.0, decision="b")
    _decision(d, "hold", T0 + 3 * MIN, arm="holdout")
    _decision(d, "forced", T0 + 4 * MIN, offer="no_offer", allowed=("no_offer",))
    _decision(d, "nosnap", T0 + 5 * MIN, snapshot=False)
    _decision(d, "late", T0 + 90 * MIN)
    spy: Spy = d.bandit

    assert learn_matured(d, T0 + 30 * MIN) == 0  # nothing an hour old yet
    assert learn_matured(d, T0 + 2 * 60 * MIN) == 2
    # c-post's other spending at T0+30 goes to her last decision before it ("nosnap", which
    # nobody learns), not to every decision in the window
    assert spy.seen == [("a", 180.0 - 40.0), ("b", 5.0)]
    # exactly what the batch path computes with the wait as the attribution window
    batch = logged_examples(d.ledger.logs(), d.ledger.outcomes_frame(), _costs(d), 1 / 24)
    by_id = dict(zip(batch["decision_id"], batch["reward"], strict=True))
    assert [r for _, r in spy.seen] == [by_id["a"], by_id["b"]]
    assert {"hold", "forced", "nosnap"}.isdisjoint(by_id)  # the batch path skips them too

    assert learn_matured(d, T0 + 2 * 60 * MIN) == 0  # learned once
    # an outcome reported after its decision was learned does not teach it twice
    _outcome(d, "a-late", T0 + 25 * MIN, "revenue", 9.0, decision="a")
    assert learn_matured(d, T0 + 2 * 60 * MIN + MIN) == 0
    assert learn_matured(d, T0 + 3 * 60 * MIN) == 1  # "late" matured
    assert [t for t, _ in spy.seen] == ["a", "b", "late"]
    assert spy.version == "untrained+3" and d.model_versions()["bandit"] == "untrained+3"
    state = d.health()["bandit_learner"]
    assert state["learned"] == 3 and state["skipped"] == 3 and state["last_error"] is None
    assert state["watermark"] == (T0 + 90 * MIN).isoformat()


def test_a_new_offer_is_learned_online_until_it_leaves_cold_start(ldeps: Deps) -> None:
    """The serving bandit was trained before family_plan joined the catalogue: the learner
    learns its decisions (it refused them all), counting them, and once learned
    ``bandit_cold_start_examples`` times the bandit ranks it like the others."""
    d = ldeps
    known = {k: v for k, v in offer_features(d.catalog).items() if k != "family_plan"}
    d.bandit = Spy(known, exploration="epsilon", epsilon=0.2, cold_start_examples=2)
    new = ("device_upgrade", "family_plan")
    _decision(d, "a", T0 + MIN, offer="family_plan", allowed=new)
    _decision(d, "b", T0 + 2 * MIN, offer="device_upgrade", allowed=new)
    _decision(d, "c", T0 + 70 * MIN, offer="family_plan", allowed=new)
    assert d.health()["bandit_cold_start"]["offers"] == {"family_plan": 0}
    assert learn_matured(d, T0 + 65 * MIN) == 2
    assert d.health()["bandit_learner"]["refused"] == 0
    assert d.health()["bandit_cold_start"]["offers"] == {"family_plan": 1}  # shown once
    assert learn_matured(d, T0 + 3 * 60 * MIN) == 1
    assert "bandit_cold_start" not in d.health()
    probs = d.bandit.distribution({"arpu": 45.0}, "web", {}, list(new))
    assert set(probs) == set(new) and sum(probs.values()) == pytest.approx(1.0)


def test_pages_and_decisions_at_the_same_instant(ldeps: Deps, monkeypatch) -> None:
    monkeypatch.setattr(learner, "PAGE", 3)
    tags = [_decision(ldeps, f"same{i}", T0 + MIN) for i in range(8)]
    tags += [_decision(ldeps, f"next{i}", T0 + 2 * MIN) for i in range(2)]
    assert learn_matured(ldeps, T0 + 3 * 60 * MIN) == 10
    assert sorted(t for t, _ in ldeps.bandit.seen) == sorted(tags)
    assert learn_matured(ldeps, T0 + 4 * 60 * MIN) == 0


def test_wrapped_missing_and_swapped_bandits(ldeps: Deps) -> None:
    """The replay's Recorder wraps the policy; with no bandit matured decisions are passed
    over; a promotion that swaps the bandit keeps the watermark."""
    first = ldeps.bandit
    ldeps.bandit = Recorder(first)
    _decision(ldeps, "one", T0 + MIN)
    assert learn_matured(ldeps, T0 + 2 * 60 * MIN) == 1 and first.seen[0][0] == "one"
    ldeps.bandit = None
    _decision(ldeps, "two", T0 + 2 * 60 * MIN)
    assert learn_matured(ldeps, T0 + 4 * 60 * MIN) == 0
    promoted = ldeps.bandit = _spy(ldeps, version="bandit:2")
    _decision(ldeps, "three", T0 + 4 * 60 * MIN)
    assert learn_matured(ldeps, T0 + 6 * 60 * MIN) == 1
    assert [t for t, _ in promoted.seen] == ["three"] and len(first.seen) == 1
    assert ldeps.model_versions()["bandit"] == "bandit:2+1"
    assert ldeps.learner.skipped == 1  # "two"


def _promote(deps: Deps, version: str, through: datetime | None, fmt: int | None = None) -> None:
    """A bandit promoted into the deps' BentoML store, as ``nextbest train bandit --promote``
    leaves it (``fmt``: overwrite its example format, as an older release would have)."""
    import json

    from training.bandit_registry import to_bentoml
    from training.scoring import bentoml_models

    to_bentoml(deps.settings, _spy(deps), version, through)
    if fmt is not None:
        meta = Path(bentoml_models(deps.settings).get("bandit:latest").path_of("meta.json"))
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": fmt}))


def test_a_bandit_promoted_while_serving_is_adopted_once(ldeps: Deps) -> None:
    """The promoted model replaces the serving one, and the watermark moves to just after the
    last decision it was trained on: "one" (trained on) is not learned again, "two" is."""
    assert learner.adopt_promoted(ldeps) is None  # nothing promoted: the serving one stays
    _decision(ldeps, "one", T0 + MIN)
    _decision(ldeps, "two", T0 + 2 * MIN)
    _promote(ldeps, "7", through=T0 + MIN)
    assert learner.adopt_promoted(ldeps) == "bandit:7"
    assert ldeps.bandit.base_version == ldeps.model_versions()["bandit"] == "bandit:7"
    assert ldeps.learner.ts == T0 + MIN + timedelta(microseconds=1)
    assert learner.adopt_promoted(ldeps) is None  # already serving it
    assert learn_matured(ldeps, T0 + 3 * 60 * MIN) == 1
    assert ldeps.model_versions()["bandit"] == "bandit:7+1"


def test_a_worker_starts_learning_after_its_champion_s_training_logs(ldeps: Deps) -> None:
    ldeps.clock = lambda: T0 + 60 * MIN
    assert learner.start_for(ldeps) == T0 + 60 * MIN  # nothing promoted: from now
    _promote(ldeps, "7", through=T0 + MIN)
    assert learner.start_for(ldeps) == T0 + 60 * MIN  # promoted, but not the one serving
    assert learner.adopt_promoted(ldeps) == "bandit:7"
    assert learner.start_for(ldeps) == T0 + MIN + timedelta(microseconds=1)
    _promote(ldeps, "8", through=None)  # a champion that does not say: from now
    assert learner.adopt_promoted(ldeps) == "bandit:8"
    assert learner.start_for(ldeps) == T0 + 60 * MIN


def test_a_promoted_bandit_that_cannot_load_leaves_the_serving_one(ldeps: Deps) -> None:
    serving = ldeps.bandit
    _promote(ldeps, "8", through=None, fmt=3)
    assert learner.adopt_promoted(ldeps) is None and ldeps.bandit is serving
    assert ldeps.missing["bandit"].startswith("promoted bandit:8 not loaded: BanditError: ")
    assert ldeps.health()["status"] == "degraded"
    assert ldeps.learner.ts == T0  # the watermark stays with the serving model


def test_decisions_record_the_updated_version(ldeps: Deps) -> None:
    """The real pipeline: /decide's function logs the version, /outcome's the reward, and the
    next decision records the version with the update."""
    ldeps.bandit = BanditPolicy(offer_features(ldeps.catalog), version="bandit:1",
                                exploration="epsilon", epsilon=0.2)  # fmt: skip
    ldeps.clock = lambda: T0 + MIN
    first = decide(DecideRequest(customer_id="c-post", channel="web"), ldeps)
    assert first.model_versions["bandit"] == "bandit:1" and first.offers
    chosen = first.offers[0].offer_id
    report = {"idempotency_key": "k1", "decision_id": first.decision_id, "type": "conversion"}
    ldeps.clock = lambda: T0 + 9 * MIN  # the outcome is reported when it happens
    record_outcome(OutcomeRequest(**report, value=180.0, ts=T0 + 9 * MIN), ldeps)
    assert learn_matured(ldeps, T0 + 2 * 60 * MIN) == 1
    again = decide(DecideRequest(customer_id="c-post", channel="web"), ldeps)
    assert again.model_versions["bandit"] == "bandit:1+1"
    assert ldeps.ledger.decision(again.decision_id).model_versions["bandit"] == "bandit:1+1"
    assert chosen in ldeps.ledger.decision(first.decision_id).probabilities


def test_a_refused_decision_is_passed_over(ldeps: Deps) -> None:
    """An offer since removed from the catalogue cannot be learned: counted, not retried."""
    _decision(ldeps, "gone", T0 + MIN, offer="retired_offer", allowed=("retired_offer", "no_offer"))
    _decision(ldeps, "fine", T0 + 2 * MIN)
    assert learn_matured(ldeps, T0 + 2 * 60 * MIN) == 1
    assert ldeps.learner.refused == 1 and learn_matured(ldeps, T0 + 3 * 60 * MIN) == 0


def test_a_failing_ledger_is_reported_and_retried(ldeps: Deps) -> None:
    _decision(ldeps, "a", T0 + MIN)
    with ldeps.ledger.engine.begin() as conn:
        conn.execute(text("ALTER TABLE outcomes RENAME TO outcomes_away"))
    with pytest.raises(Exception, match="outcomes"):
        learn_matured(ldeps, T0 + 2 * 60 * MIN)
    assert "outcomes" in ldeps.health()["bandit_learner"]["last_error"]
    with ldeps.ledger.engine.begin() as conn:
        conn.execute(text("ALTER TABLE outcomes_away RENAME TO outcomes"))
    assert learn_matured(ldeps, T0 + 2 * 60 * MIN) == 1  # the watermark did not move
    assert ldeps.learner.last_error is None


def test_no_wait_still_leaves_a_request_its_commit(ldeps: Deps) -> None:
    """Wait 0: a decision is learned once older than a request may take (request_timeout)."""
    ldeps.settings = ldeps.settings.model_copy(update={"bandit_reward_wait_minutes": 0.0})
    _decision(ldeps, "a", T0 + MIN)
    assert learn_matured(ldeps, T0 + MIN + timedelta(seconds=5)) == 0
    assert learn_matured(ldeps, T0 + MIN + timedelta(seconds=10)) == 1
    assert ldeps.bandit.seen == [("a", 0.0)]


def test_a_wait_past_the_attribution_window_counts_only_the_window(ldeps: Deps) -> None:
    ldeps.settings = ldeps.settings.model_copy(
        update={"bandit_reward_wait_minutes": 40 * 24 * 60.0, "attribution_days": 30}
    )
    _decision(ldeps, "a", T0 + MIN)
    _outcome(ldeps, "in", T0 + timedelta(days=29), "revenue", 10.0, customer="c-post")
    _outcome(ldeps, "out", T0 + timedelta(days=35), "revenue", 70.0, customer="c-post")
    assert learn_matured(ldeps, T0 + timedelta(days=39)) == 0
    assert learn_matured(ldeps, T0 + timedelta(days=41)) == 1
    assert ldeps.bandit.seen == [("a", 10.0)]


def test_a_first_call_starts_the_watermark_now(deps: Deps) -> None:
    deps.bandit = _spy(deps)
    _decision(deps, "old", T0 - 2 * 24 * 60 * MIN)
    assert learn_matured(deps, T0) == 0 and deps.learner.ts == T0


def test_default_settings() -> None:
    s = Settings()
    assert s.bandit_reward_wait_minutes == 24 * 60 and s.bandit_learn_every_seconds == 30


@pytest.mark.slow
def test_the_running_service_learns_as_outcomes_arrive(tmp_path: Path) -> None:
    """A real ``bentoml serve`` and its learner process with a promoted bandit, no reward wait
    and a 0.2 s tick: the decision after an outcome records the bandit's version with its
    updates (published by the learner, swapped in by the worker); a bandit promoted while it
    runs is adopted on the next tick."""
    from benchmarks.decide import prepare_features
    from offers.catalog import load_catalog
    from serving import run
    from training.bandit_registry import to_bentoml

    settings = Settings(home=tmp_path).ensure_dirs()
    prepare_features(settings, customers=5)  # bench000004 may see data_addon, streaming, none
    actions = offer_features(load_catalog())
    to_bentoml(settings, BanditPolicy(actions, exploration="epsilon", epsilon=0.2), "1")
    env = {
        "NEXTBEST_BANDIT_REWARD_WAIT_MINUTES": "0",
        "NEXTBEST_BANDIT_LEARN_EVERY_SECONDS": "0.2",
        "NEXTBEST_LEARNER_PUBLISH_SECONDS": "0.2",
        "NEXTBEST_REQUEST_TIMEOUT": "2",  # also how long a decision waits for its commit
        "NEXTBEST_GLOBAL_HOLDOUT_SHARE": "0",
        "NEXTBEST_EXPERIMENT_HOLDOUT_SHARE": "0",
    }
    log = tmp_path / "server.log"
    with (
        run.served(settings, log=log, learner=True, **env) as base,
        httpx.Client(base_url=base, headers=CHANNEL) as client,
    ):
        body = {"customer_id": "bench000004", "channel": "web"}
        first = client.post("/decide", json=body).json()
        assert first["model_versions"]["bandit"] == "bandit:1", first
        assert first["arm"] == "treatment" and first["offers"], first
        out = {"idempotency_key": "e2e-1", "decision_id": first["decision_id"],
               "type": "conversion", "value": 40.0}  # fmt: skip
        assert client.post("/outcome", json=out).status_code == 200
        deadline, health = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            health = client.get("/healthz", headers=ADMIN).json()
            if health["model_versions"]["bandit"].startswith("bandit:1+"):
                break
            time.sleep(0.2)
        assert health["bandit_learner"]["learner"]["learned"] >= 1, (
            health,
            log.read_text()[-2000:],
        )
        later = client.post("/decide", json=body).json()
        version = later["model_versions"]["bandit"]
        assert version.startswith("bandit:1+") and int(version.split("+")[1]) >= 1, later
        # promoted while it runs (as `nextbest train bandit --promote` does): adopted
        through = datetime.fromisoformat(health["bandit_learner"]["learner"]["watermark"])
        to_bentoml(settings, BanditPolicy(actions, exploration="epsilon"), "2", through)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = client.get("/healthz", headers=ADMIN).json()
            if health["model_versions"]["bandit"].startswith("bandit:2"):
                break
            time.sleep(0.2)
        assert health["model_versions"]["bandit"].startswith("bandit:2"), log.read_text()[-2000:]
        # its watermark: after "first" (trained on), so "later" is learned into it (+1)
        health = _until_published(client, "bandit:2")
        assert health["bandit_learner"]["learner"]["watermark"] > through.isoformat()
        assert client.post("/decide", json=body).json()["model_versions"]["bandit"] in (
            "bandit:2",
            "bandit:2+1",
        )


def _until_published(client: httpx.Client, base: str) -> dict:
    """/healthz once the learner's heartbeat says it published a version grown from ``base``
    (its watermark then is the adopted model's)."""
    deadline, health = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        health = client.get("/healthz", headers=ADMIN).json()
        if (health["bandit_learner"].get("published") or "").startswith(base):
            return health
        time.sleep(0.2)
    raise AssertionError(f"{base} not published: {health}")


def test_an_order_goes_to_the_persons_last_decision_even_one_not_matured(ldeps: Deps) -> None:
    """Issue 12 item 2: the learner applies the attribution rule with every decision of the
    person, not only the page it learns: a purchase after a later decision is that one's."""
    _decision(ldeps, "a", T0 + MIN)
    _decision(ldeps, "b", T0 + 51 * MIN, offer="data_addon")
    _outcome(ldeps, "rev", T0 + 55 * MIN, "revenue", 20.0, customer="c-post")
    assert learn_matured(ldeps, T0 + 100 * MIN) == 1  # "a" matured, "b" not yet
    assert ldeps.bandit.seen == [("a", 0.0)]
    assert learn_matured(ldeps, T0 + 120 * MIN) == 1
    assert ldeps.bandit.seen == [("a", 0.0), ("b", 20.0)]
