"""An outbound run end to end on a small home: one decision per customer, the chosen
messages in the outbox with their decisions (same transaction, probability 1), nothing for
the holdout, every limit kept, the limits' prices stored and charged online."""

from __future__ import annotations

import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from nextbest.settings import Settings
from offers.catalog import load_catalog
from record.tables import decisions, limit_prices, outbox
from serving import decide as pipeline
from serving.deps import price_refresher
from serving.limits import parse_limits
from serving.outbound import OutboundError, audience, run_outbound
from tests.serving.conftest import real_deps

LIMITS = """
offers: {device_upgrade: {stock: 3}, retention_discount: {stock: 2}}
channels: {email: {capacity_per_day: 12}}
budget: {money: 400}
"""


class Scores:
    """Deterministic model scores: each customer's uplift per offer from a hash of both, so the
    LP has real choices to make (the pipeline's arithmetic stays its own)."""

    versions = {"churn": "test", "propensity": "test"}

    def churn_risk(self, features: dict[str, Any]) -> float:
        return 0.2

    def offer_scores(self, features: dict, channel: str, ids: list[str]) -> tuple[list, list]:
        cid = features.get("customer_id", "")
        treated = [0.05 + (zlib.crc32(f"{cid}:{o}".encode()) % 100) / 400 for o in ids]
        return treated, [0.02] * len(ids)


def profiles(n: int) -> dict[str, dict[str, Any]]:
    return {
        f"c{i:03d}": {
            "customer_id": f"c{i:03d}",
            "plan": "postpaid_m",
            "tenure_days": 900,
            "months_left_on_contract": 2.0,
            "arpu": 45.0,
            "consent_email": i % 7 != 0,
            "consent_sms": False,
        }  # fmt: skip
        for i in range(n)
    }


@pytest.fixture
def run_deps(tmp_path: Path) -> Any:
    settings = Settings(home=tmp_path, global_holdout_share=0.0, experiment_holdout_share=0.3)
    deps = real_deps(settings, profiles(40))
    deps.models, deps.missing = Scores(), {}
    return deps


def test_run_writes_messages_with_their_decisions(run_deps: Any) -> None:
    catalog = load_catalog()
    limits = parse_limits(LIMITS, catalog)
    customers = audience(run_deps, None)
    assert len(customers) == 40
    result = run_outbound(run_deps, "email", limits, customers, milp_seconds=30)
    with run_deps.ledger.engine.connect() as conn:
        rows = {r.decision_id: r for r in conn.execute(select(decisions)).mappings()}
        sent = list(conn.execute(select(outbox)).mappings())
        prices = list(conn.execute(select(limit_prices)).mappings())
    assert len(rows) == 40 == result["decisions"]  # one decision per customer
    assert Counter(r["customer_id"] for r in rows.values()).most_common(1)[0][1] == 1
    assert len(sent) == result["messages"] == result["lp"]["chosen"] > 0
    for m in sent:  # each message with its decision: the same offer, probability 1, pending
        row = rows[m["decision_id"]]
        assert (row["arm"], row["offer_id"], row["propensity"]) == ("treatment", m["offer_id"], 1.0)
        assert row["probabilities"] == {m["offer_id"]: 1.0} and row["status"] == "pending"
        assert m["trigger"] == f"outbound:{result['run_id']}"
    holdout = {r["customer_id"] for r in rows.values() if r["arm"] == "holdout"}
    assert len(holdout) == result["holdout"] > 0
    assert not holdout & {m["customer_id"] for m in sent}  # the holdout gets nothing
    assert all(rows[d]["offer_id"] is None for d in rows if rows[d]["arm"] == "holdout")
    # every limit kept
    per_offer = Counter(m["offer_id"] for m in sent)
    assert per_offer["device_upgrade"] <= 3 and per_offer["retention_discount"] <= 2
    assert len(sent) <= 12
    assert sum(catalog.get(o).cost * n for o, n in per_offer.items()) <= 400
    assert result["lp"]["total"] >= result["greedy"]["total"]
    assert result["milp"]["status"] == "optimal"
    assert result["lp"]["total"] >= 0.995 * result["milp"]["total"]
    # no consent, no message
    assert not {m["customer_id"] for m in sent} & {f"c{i:03d}" for i in range(0, 40, 7)}
    assert {(p["kind"], p["key"]) for p in prices} == {
        ("offer_stock", "device_upgrade"), ("offer_stock", "retention_discount"),
        ("channel_capacity", "email"), ("budget", "money"),
    }  # fmt: skip
    assert any(p["price"] > 0 for p in prices)


def test_capacity_used_today_counts(run_deps: Any) -> None:
    limits = parse_limits("channels: {email: {capacity_per_day: 5}}", load_catalog())
    first = run_outbound(run_deps, "email", limits, audience(run_deps, None))
    second = run_outbound(run_deps, "email", limits, audience(run_deps, None))
    assert first["messages"] == 5 and second["capacity_left"] == 0 and second["messages"] == 0


def test_price_book_after_a_run(run_deps: Any) -> None:
    limits = parse_limits(LIMITS, load_catalog())
    result = run_outbound(run_deps, "email", limits, audience(run_deps, None))
    price_refresher(run_deps).refresh()
    book = run_deps.prices
    assert book is not None
    stored = {(p["kind"], p["key"]): p["price"] for p in result["prices"]}
    cost = load_catalog().get("device_upgrade").cost
    expected = (stored[("offer_stock", "device_upgrade")] + stored[("channel_capacity", "email")]
                + stored[("budget", "money")] * cost)  # fmt: skip
    assert book.charge("device_upgrade", "email") == pytest.approx(
        expected, abs=1e-4
    )  # printed to 6 places


def test_decision_value_drops_by_the_price(run_deps: Any) -> None:
    from serving.schemas import DecideRequest

    limits = parse_limits(LIMITS, load_catalog())
    run_outbound(run_deps, "email", limits, audience(run_deps, None))
    request = DecideRequest(customer_id="c001", channel="email")
    before = pipeline.plan(request, run_deps)[1].scores["value"]
    price_refresher(run_deps).refresh()
    after = pipeline.plan(request, run_deps)[1].scores["value"]
    for oid, v in before.items():
        assert after[oid] == pytest.approx(v - run_deps.prices.charge(oid, "email"))
    assert any(after[o] < before[o] for o in before)


def test_audience_file(run_deps: Any, tmp_path: Path) -> None:
    with pytest.raises(OutboundError, match=r"--audience: no audience 'vip' \(.*vip.csv"):
        audience(run_deps, "vip")
    (tmp_path / "audiences").mkdir()
    (tmp_path / "audiences" / "vip.csv").write_text("customer_id\nc001\n c002 \nc001\n\n")
    assert audience(run_deps, "vip") == ["c001", "c002"]


def test_cli_bad_limits_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nextbest.cli import app

    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path))
    bad = tmp_path / "limits.yaml"
    bad.write_text("offers: {device_discount: {stock: 3}}\n")
    res = CliRunner().invoke(app, ["outbound", "run", "--channel", "email", "--limits", str(bad)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: limits.offers.device_discount: unknown")


def test_truth_values_each_allocation(run_deps: Any) -> None:
    """On a simulated world the truth values each allocation, and the oracle (LP and greedy on
    the truth's values) shows what the limits allow with perfect scores."""
    import numpy as np

    def truth(ids: list[str], offers: list[str], channel: str, at: Any) -> np.ndarray:
        assert channel == "email" and len(ids) == 40
        return np.array([[(zlib.crc32(f"{c}{o}".encode()) % 50) / 10 - 1 for o in offers]
                         for c in ids])  # fmt: skip

    limits = parse_limits(LIMITS, load_catalog())
    result = run_outbound(run_deps, "email", limits, audience(run_deps, None), truth=truth)
    for method in ("lp", "greedy", "milp"):
        assert isinstance(result[method]["truth_total"], float)
    oracle = result["oracle"]
    assert oracle["lp"]["total"] >= oracle["greedy"]["total"]
    assert oracle["lp"]["total"] >= result["lp"]["truth_total"]  # nothing beats the oracle
    assert oracle["milp"]["status"] == "optimal"
    assert oracle["lp"]["total"] >= 0.995 * oracle["milp"]["total"]


class Negative(Scores):
    """The demo world's propensity model in miniature: every treated rate below the
    untreated one, so every offer is worth less than nothing."""

    def offer_scores(self, features: dict, channel: str, ids: list[str]) -> tuple[list, list]:
        treated, _ = super().offer_scores(features, channel, ids)
        return treated, [t + 0.01 for t in treated]


def test_run_says_why_it_sends_nothing(run_deps: Any) -> None:
    """A run whose models value every allowed offer below zero has no candidates; its
    figures say so (pairs valued, none positive, the best value) instead of a bare 0."""
    limits = parse_limits(LIMITS, load_catalog())
    customers = audience(run_deps, None)
    worth = run_outbound(run_deps, "email", limits, customers)["values"]
    assert worth["positive"] > 0 and worth["max"] > 0
    run_deps.models = Negative()
    result = run_outbound(run_deps, "email", limits, customers)
    assert result["candidates"] == 0 == result["messages"]
    assert result["values"]["pairs"] == worth["pairs"] > 0  # the same offers, all valued
    assert result["values"]["positive"] == 0 and result["values"]["max"] < 0


def test_second_run_decides_on_values_before_prices(run_deps: Any) -> None:
    """A run prices its own limits: an earlier run's prices in force do not lower the values
    it solves with, and the holdout draws
    of the Deps it planned with are recorded."""
    from sqlalchemy import func

    from record.tables import assignments

    def values(run_id: str) -> dict[str, dict]:
        with run_deps.ledger.engine.connect() as conn:
            rows = conn.execute(select(decisions).where(decisions.c.reason.contains(run_id)))
            return {r.customer_id: r.scores["value"] for r in rows if r.offer_id == "no_offer"}

    text = "offers: {device_upgrade: {stock: 2}}\nchannels: {email: {capacity_per_day: 10}}"
    limits = parse_limits(text, load_catalog())
    first = run_outbound(run_deps, "email", limits, audience(run_deps, None))
    price_refresher(run_deps).refresh()
    assert run_deps.prices is not None and run_deps.prices.charge("device_upgrade", "email") > 0
    second = run_outbound(run_deps, "email", limits, audience(run_deps, None))
    before, after = values(first["run_id"]), values(second["run_id"])
    both = before.keys() & after.keys()
    assert len(both) > 10 and all(before[c] == after[c] for c in both)
    with run_deps.ledger.engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(assignments)).scalar_one()
    assert n >= 40  # every customer's draw
