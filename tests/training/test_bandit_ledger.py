"""The bandit's reward counts what attribution credits: each order once, to one delivered
decision (issue 12 items 1, 2 and 5), for both rewards."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from training.bandit_ledger import logged_examples

T = pd.Timestamp("2026-01-01", tz="UTC")
H = pd.Timedelta(hours=1)
COSTS = {"x": 30.0, "y": 0.0}


def _decision(did: str, cid: str, at: pd.Timestamp, offer: str = "x", status: Any = "shown"):
    return {"decision_id": did, "customer_id": cid, "ts": at, "channel": "web", "context": {},
            "arm": "treatment", "offer_id": offer, "propensity": 0.5,
            "probabilities": {"x": 0.5, "y": 0.5}, "scores": {"features": {"f": 1.0}},
            "status": status}  # fmt: skip


def _outcome(key: str, at: pd.Timestamp, kind: str, value: float, **kw: Any) -> dict[str, Any]:
    return {"idempotency_key": key, "ts": at, "type": kind, "value": value, "decision_id": None,
            "customer_id": None, **kw}  # fmt: skip


# case: decisions, outcomes, {decision: spend reward}, {decision: conversion reward}
CASES = {
    "unlinked_with_two_decisions_goes_to_the_last": (
        [_decision("a", "p", T), _decision("b", "p", T + H, offer="y")],
        [_outcome("k", T + 2 * H, "revenue", 20.0, customer_id="p")],
        {"a": 0.0, "b": 20.0},
        {"a": 0.0, "b": 0.0},
    ),
    "linked_before_its_decision_counts_nothing": (
        [_decision("a", "p", T)],
        [_outcome("k", T - H, "conversion", 100.0, decision_id="a", customer_id="p")],
        {"a": 0.0},
        {"a": 0.0},
    ),
    "cancelled_message_is_not_learned_and_takes_nothing": (
        [_decision("a", "p", T), _decision("m", "p", T + H, status="cancelled")],
        [_outcome("k", T + 2 * H, "revenue", 20.0, customer_id="p")],
        {"a": 20.0},
        {"a": 0.0},
    ),
    "duplicate_order_via_event_and_outcome_counts_once_and_pays_the_cost_once": (
        [_decision("a", "p", T)],
        [
            _outcome("event:1", T + H, "revenue", 100.0, customer_id="p", order_id="o1"),
            _outcome(
                "k1", T + H, "conversion", 100.0, decision_id="a", customer_id="p", order_id="o1"
            ),  # fmt: skip
            _outcome(
                "k2",
                T + 2 * H,
                "conversion",
                100.0,
                decision_id="a",
                customer_id="p",
                order_id="o1",
            ),  # the conversion reported again under a new key
        ],
        {"a": 70.0},
        {"a": 70.0},
    ),
    "merged_ids_count_for_the_person": (
        [_decision("a", "old", T)],
        [_outcome("k", T + H, "revenue", 20.0, customer_id="new")],
        {"a": 20.0},
        {"a": 0.0},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bandit_reward_uses_the_attribution_rule(case: str) -> None:
    decisions, outcomes, spend, conversion = CASES[case]
    logs, found = pd.DataFrame(decisions), pd.DataFrame(outcomes)
    merged = {"customer_map": {"old": "new"}} if case.startswith("merged") else {}
    for reward, expected in (("spend", spend), ("conversion", conversion)):
        ex = logged_examples(logs, found, COSTS, 30, reward, **merged)
        assert dict(zip(ex["decision_id"], ex["reward"], strict=True)) == expected, reward
