"""plan_many equals planning the requests one after another (byte for byte, same seeds), on
every path a visit can take; decide_many commits a batch in one transaction."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from sqlalchemy import select

from nextbest.settings import Settings
from record.ledger import Ledger
from record.tables import DecisionRow, decisions
from serving.decide import DecideRequest, Scope, decide, decide_many, plan, plan_many
from serving.deps import Deps, FeatureReader
from serving.stages import STAGES, StageTimes
from tests.serving.conftest import PROFILES, real_deps
from training.scoring import ModelBundle, ModelSpec, Scorer

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
CUSTOMERS = {**PROFILES, **{f"c{i}": dict(PROFILES["c-post"], arpu=20.0 + i) for i in range(12)}}
OFFERS = ["device_upgrade", "data_addon", "retention_discount", "streaming_bundle",
          "family_plan", "prepaid_to_postpaid", "loyalty_reward", "no_offer"]  # fmt: skip
FEATURES = ["tenure_days", "arpu", "plan"]


def bundle() -> ModelBundle:
    """Small real LightGBM models (churn, S-learner propensity) on seeded data."""
    rng = np.random.default_rng(3)
    plans = ["prepaid", "postpaid_m"]
    n = 400
    x = np.column_stack([rng.uniform(0, 1000, n), rng.uniform(5, 60, n), rng.integers(0, 2, n)])
    params = {"objective": "binary", "verbose": -1, "num_leaves": 7, "min_data_in_leaf": 5}
    churn = lgb.train(params, lgb.Dataset(x, (x[:, 1] + rng.normal(0, 9, n) > 35).astype(float)),
                      20)  # fmt: skip
    xo = np.column_stack([x, rng.integers(0, 8, n), rng.integers(0, 7, n), rng.integers(0, 2, n)])
    y = (xo[:, 3] / 8 + xo[:, 5] * 0.3 + rng.normal(0, 0.3, n) > 0.6).astype(float)
    offer = lgb.train(params, lgb.Dataset(xo, y), 20)
    cats = {"plan": plans}
    churn_spec = ModelSpec(kind="churn", learner="single", feature_service="churn_v1",
                           features=FEATURES, categories=cats)  # fmt: skip
    channels = ["app", "call_centre", "email", "paid_media", "sms", "store", "web"]
    offer_cats = cats | {"offer_id": OFFERS, "channel": channels}
    offer_spec = ModelSpec(kind="propensity", learner="s", feature_service="offer_v1",
                           features=FEATURES, categories=offer_cats,
                           extra=["offer_id", "channel", "treated"])  # fmt: skip
    versions = {"churn": "1", "propensity": "1"}
    return ModelBundle(Scorer(churn_spec, [churn]), Scorer(offer_spec, [offer]), versions)


class Prices:
    """A price book: what showing an offer on a channel uses up."""

    def charge(self, offer_id: str, channel: str) -> float:
        return 0.25 if offer_id == "device_upgrade" else 0.0


def make_deps(home: Path, case: str) -> Deps:
    settings = Settings(home=home, global_holdout_share=0.0, experiment_holdout_share=0.15)
    profiles = {k: dict(v) for k, v in CUSTOMERS.items()}
    deps = real_deps(settings, profiles)
    if case != "models missing":
        deps.models, deps.missing = bundle(), {}
    if case == "features missing":
        deps.features, deps.missing["features"] = None, "disabled"
    if case == "prices":
        deps.prices = Prices()
    ids = random.Random(11)
    deps.new_id = lambda: f"{ids.getrandbits(64):016x}"
    deps.rng = random.Random(7)
    deps.clock = lambda: NOW
    return deps


def batch() -> tuple[list[DecideRequest], list[Scope | None]]:
    """Known customers, an unknown visitor, an anonymous one, several channels, a customer four
    times on e-mail (two e-mails a week: the cap binds within the batch), a journey step."""
    reqs = [DecideRequest(customer_id="c-post", channel="email")]
    channels = ["web", "app", "email", "call_centre"]
    reqs += [DecideRequest(customer_id=f"c{i}", channel=channels[i % 4]) for i in range(12)]
    reqs += [
        DecideRequest(email="nobody@example.com", channel="web"),
        DecideRequest(channel="app"),
        DecideRequest(customer_id="c-pre", channel="web", max_offers=3),
        DecideRequest(customer_id="c-post", channel="email"),
        DecideRequest(customer_id="c-post", channel="email"),
        DecideRequest(customer_id="c-post", channel="web", max_offers=2),
        DecideRequest(customer_id="c-post", channel="email"),
        DecideRequest(customer_id="c3", channel="app"),
    ]
    scopes: list[Scope | None] = [None] * len(reqs)
    reqs.append(DecideRequest(customer_id="c5", channel="email"))
    scopes.append(Scope("nbo", frozenset({"data_addon", "no_offer"}), 0.0, "journey-d1"))
    return reqs, scopes


CASES = ["models", "models missing", "features missing", "prices"]


@pytest.mark.parametrize("case", CASES)
def test_plan_many_equals_plans_one_after_another(tmp_path: Path, case: str) -> None:
    reqs, scopes = batch()
    one = make_deps(tmp_path / "one", case)
    alone = []
    for r, s in zip(reqs, scopes, strict=True):
        response, row = plan(r, one, scope=s)
        one.ledger.pending.hold(row)  # as the writer holds it until its commit
        alone.append((response, row))
    times = StageTimes()
    together = plan_many(reqs, make_deps(tmp_path / "many", case), scopes=scopes, times=times)
    assert [r.model_dump_json() for r, _ in together] == [r.model_dump_json() for r, _ in alone]
    assert [w.model_dump_json() for _, w in together] == [w.model_dump_json() for _, w in alone]
    assert [w.planned_on for _, w in together] == [w.planned_on for _, w in alone]
    rows = [w for _, w in together]
    for response, row in together:  # built without validation: what validation would build
        assert type(response).model_validate_json(response.model_dump_json()) == response
        assert DecisionRow.model_validate(row.model_dump()).model_dump() == row.model_dump()
    assert {w.arm for w in rows} == {"treatment", "holdout"}  # a holdout customer is in it
    capped = any("email contact cap 2 reached" in w.scores["dropped"].values() for w in rows)
    assert capped == (case != "features missing")  # without features: no e-mail consent
    assert rows[-1].decision_id == "journey-d1"
    assert set(rows[-1].probabilities) <= {"data_addon", "no_offer"}
    assert set(times.seconds) == set(STAGES) and times.seconds["scoring"] > 0
    if case == "models":
        assert rows[1].scores["churn_risk"] > 0 and not rows[1].fallback
    if case == "features missing":
        assert "features: disabled" in rows[1].reason


def test_prices_are_subtracted_before_exploration(tmp_path: Path) -> None:
    req = [DecideRequest(customer_id="c-post", channel="web")]
    plain = plan_many(req, make_deps(tmp_path / "a", "models"))[0][1].scores
    priced = plan_many(req, make_deps(tmp_path / "b", "prices"))[0][1].scores
    assert "price" not in plain and priced["price"]["device_upgrade"] == 0.25
    assert priced["price"]["data_addon"] == 0.0
    for offer, value in plain["value"].items():
        assert priced["value"][offer] == value - priced["price"][offer]


def ledger_rows(ledger: Ledger) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(decisions).order_by(decisions.c.decision_id)).mappings()
        return [DecisionRow(**r).model_dump() for r in rows]


def test_decide_many_commits_in_one_transaction_what_decide_commits(tmp_path: Path) -> None:
    reqs, _ = batch()
    one = make_deps(tmp_path / "one", "models")
    answers = [decide(r, one) for r in reqs]
    many = make_deps(tmp_path / "many", "models")
    calls: list[int] = []
    record = many.ledger.record_decisions
    many.ledger.record_decisions = lambda rows: calls.append(len(rows)) or record(rows)
    together = decide_many(reqs, many)
    assert calls == [len(reqs)]  # one transaction for the batch
    assert [a.model_dump_json() for a in together] == [a.model_dump_json() for a in answers]
    assert ledger_rows(many.ledger) == ledger_rows(one.ledger)
    assert not many.ledger.pending  # nothing left held


def test_decide_many_plans_a_stale_row_again(tmp_path: Path) -> None:
    """Another writer shows c-post something between the plan and the commit: that row (and
    the later one of c-post that counted it) are planned again; the others are written."""
    reqs = [DecideRequest(customer_id=c, channel="web") for c in ("c1", "c-post", "c2")]
    deps = make_deps(tmp_path, "models")
    record = deps.ledger.record_decisions
    calls: list[list[str | None]] = []

    def other_writer_first(rows: list[DecisionRow]) -> list[DecisionRow]:
        if not calls:
            other = Ledger(deps.ledger.engine, create=False)
            shown = DecisionRow(decision_id="other", ts=NOW - timedelta(minutes=1),
                                customer_id="c-post", channel="app", experiment="nbo",
                                arm="treatment", offer_id="data_addon", propensity=1.0)  # fmt: skip
            other.record_decision(shown)
        calls.append([r.customer_id for r in rows])
        return record(rows)

    deps.ledger.record_decisions = other_writer_first
    answers = decide_many(reqs, deps)
    assert calls == [["c1", "c-post", "c2"], ["c-post"]]
    assert [a.customer_id for a in answers] == ["c1", "c-post", "c2"]
    written = {r["decision_id"]: r for r in ledger_rows(deps.ledger)}
    assert set(written) == {"other", *(a.decision_id for a in answers)}


def test_bad_lengths_are_refused(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, "models missing")
    with pytest.raises(ValueError, match="plan_many: 1 requests, but 2 scopes"):
        plan_many([DecideRequest(channel="web")], deps, scopes=[None, None])


def timed_reader(deps: Deps) -> list[Any]:
    """The test's feature table, with a field that counts from the read's time (as the basket
    age does), one time for all or one per customer; the times asked are kept."""
    asked: list[Any] = []
    start = NOW - timedelta(days=30)

    def read_online(store: Any, service: str, ids: list[str], now: Any = None) -> list[dict]:
        asked.append(now)
        at = [now] * len(ids) if isinstance(now, datetime) else list(now)
        return [
            {"customer_id": c, **CUSTOMERS.get(c, {}),
             "basket_minutes_since_change": (t - start) / timedelta(minutes=1)}
            for c, t in zip(ids, at, strict=True)
        ]  # fmt: skip

    deps.features = FeatureReader(None, read_online)
    return asked


def test_each_request_is_decided_at_its_own_time(tmp_path: Path) -> None:
    """``at``: a batch of visits days apart decides each as deciding it alone at its time
    would: its features, caps (c-post's e-mails: two a week) and row are as of it."""
    reqs, _ = batch()
    at = [NOW + timedelta(days=i, minutes=i) for i in range(len(reqs))]
    one = make_deps(tmp_path / "one", "models")
    timed_reader(one)
    alone = []
    for r, t in zip(reqs, at, strict=True):
        one.clock = lambda t=t: t
        alone.append(decide(r, one))
    many = make_deps(tmp_path / "many", "models")  # its clock stays at NOW
    asked = timed_reader(many)
    together = decide_many(reqs, many, at=at)
    assert [a.model_dump_json() for a in together] == [a.model_dump_json() for a in alone]
    rows = ledger_rows(many.ledger)
    assert rows == ledger_rows(one.ledger)
    assert sorted(r["ts"].replace(tzinfo=UTC) for r in rows) == at  # each at its own time
    assert len(asked) == 1 and len(asked[0]) == len(reqs) - 2  # one read; two not known
    emails = sorted((r["ts"], r["scores"]["dropped"]) for r in rows
                    if r["customer_id"] == "c-post" and r["channel"] == "email")  # fmt: skip
    # days 0, 17, 18, 20: only the last has two e-mails in the week before it
    assert ["email contact cap 2 reached" in d.values() for _, d in emails] == [0, 0, 0, 1]


def test_bad_times_are_refused(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, "models missing")
    reqs = [DecideRequest(channel="web")]
    with pytest.raises(ValueError, match="plan_many: 1 requests, but 2 times"):
        plan_many(reqs, deps, at=[NOW, NOW])
    with pytest.raises(ValueError, match="decide_many: 1 requests, but 0 times"):
        decide_many(reqs, deps, at=[])
