"""Target-group definitions: validation (one line naming the culprit) and evaluation."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from serving.target_groups import (
    EXAMPLES,
    TargetGroupError,
    count_events,
    is_member,
    load_group_file,
    members_mask,
    parse_group,
)

GOOD: dict[str, Any] = {
    "name": "device_intent",
    "conditions": [
        {"event": "product_view", "product": "dev_", "op": ">=", "count": 3, "within": "7d"},
        {"score": "churn_risk", "op": ">", "value": 0.3},
        {"event": "purchase", "op": "==", "count": 0, "within": "7d"},
        {"field": "consent_paid_media", "op": "==", "value": True},
    ],
}


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return data


def at(i: int, field: str = "") -> str:
    """The start of the error line for condition i (and a field of it)."""
    return rf"^g\.yaml: conditions\[{i}\]" + (rf"\.{field}: " if field else ": ")


BAD = [
    # unknown field
    (("conditions", 3, "field"), "consent_adz", at(3) + "unknown profile field 'consent_adz'"),
    # bad operators
    (("conditions", 1, "op"), ">>", at(1, "op") + "Input should be '==', '!='"),
    (("conditions", 0, "op"), "in", at(0) + "op in cannot compare an event count"),
    (("conditions", 1, "op"), "not_in", at(1, "op") + "not_in cannot compare a score"),
    (("conditions", 2, "op"), "~", at(2, "op") + "Input should be"),
    # bad threshold types
    (("conditions", 1, "value"), "high", at(1, "value") + "Input should be a valid number"),
    (("conditions", 3, "value"), "yes",
     at(3) + "field 'consent_paid_media' is boolean, got 'yes'"),
    (("conditions", 0, "count"), "three", at(0, "count") + "Input should be a valid integer"),
    (("conditions", 0, "count"), -1, at(0, "count") + "Input should be greater than or equal"),
    # unknown event, bad window, unknown condition kind, bad holdout, bad name, extra key
    (("conditions", 0, "event"), "pageview", at(0, "event") + "Input should be 'session_start'"),
    (("conditions", 0, "within"), "7 parsecs", at(0, "within") + "expected a duration"),
    (("conditions", 2), {"segment": "champions"},
     at(2) + "a condition names a field, a score or an event"),
    (("holdout_share",), 1.0, r"^g\.yaml: holdout_share: Input should be less than 1"),
    (("name",), "Device Intent", r"^g\.yaml: name: String should match pattern"),
    (("conditions", 3, "colour"), "red", at(3, "colour") + "Extra inputs are not permitted"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "error"), BAD)
def test_bad_definitions_fail_with_one_line_naming_the_culprit(
    path: tuple[Any, ...], value: Any, error: str
) -> None:
    with pytest.raises(TargetGroupError, match=error) as info:
        parse_group(_with(path, value), "g.yaml")
    assert "\n" not in str(info.value)


def test_the_shipped_example_loads_and_segments_are_fields() -> None:
    group = load_group_file(EXAMPLES / "device_intent.yaml")
    assert group.experiment == "audience:device_intent"
    assert group.reacts_to("purchase") and not group.reacts_to("usage")
    parse_group(_with(("conditions", 3), {"field": "rfm_segment", "op": "in",
                                          "value": ["champions", "loyal"]}))  # fmt: skip


def test_a_file_named_unlike_its_group_is_refused(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "other.yaml").write_text((EXAMPLES / "device_intent.yaml").read_text())
    with pytest.raises(TargetGroupError, match="other.yaml: name 'device_intent' differs"):
        load_group_file(tmp_path / "other.yaml")


def test_event_counts_respect_window_product_and_channel() -> None:
    group = parse_group(GOOD)
    now = datetime(2026, 2, 1, 12, tzinfo=UTC)
    day = timedelta(days=1)
    events = pd.DataFrame(
        [
            ("a", now - 1 * day, "product_view", "dev_phone", "web"),
            ("a", now - 2 * day, "product_view", "dev_watch", "app"),
            ("a", now - 6 * day, "product_view", "dev_router", "web"),
            ("a", now - 8 * day, "product_view", "dev_phone", "web"),  # outside 7 days
            ("a", now - 1 * day, "product_view", "acc_case", "web"),  # not a device
            ("a", now + 1 * day, "product_view", "dev_phone", "web"),  # the future
            ("b", now - 1 * day, "product_view", "dev_phone", "web"),
            ("b", now - 3 * day, "purchase", "dev_phone", "store"),
        ],
        columns=["customer_id", "ts", "event_type", "product_id", "channel"],
    )
    counts = count_events(events, group.event_rules(), now)
    assert counts.loc["a"].tolist() == [3, 0]
    assert counts.loc["b"].tolist() == [1, 1]


def test_membership_needs_every_condition_and_unknown_is_out() -> None:
    group = parse_group(GOOD)
    frame = pd.DataFrame(
        {
            "event_0": [3, 3, 2, 3, 3],
            "event_1": [0, 1, 0, 0, 0],
            "churn_risk": [0.5, 0.5, 0.5, 0.2, None],
            "consent_paid_media": [True, True, True, True, True],
        }
    )
    assert members_mask(group, frame).tolist() == [True, False, False, False, False]
    profile = {"consent_paid_media": False}
    assert not is_member(group, profile, {"churn_risk": 0.9}, [5, 0])
    assert is_member(group, {"consent_paid_media": True}, {"churn_risk": 0.9}, [5, 0])
