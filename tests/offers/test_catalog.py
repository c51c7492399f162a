"""The offer catalogue: the shipped file loads, rules evaluate, invalid files fail at a line."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offers.catalog import CatalogError, load_catalog, parse_catalog
from offers.rules import Rule, rule_fields

BASE = """\
version: 1
offers:
  - id: data_addon
    name: 10 GB data add-on
    headline: More data
    body: Add 10 GB.
    cta: Add data
    product_id: data_10gb
    value: 40.0
    cost: 0.0
    purpose: marketing
    channels: [web, app]
    eligibility:
      - {field: plan, op: in, value: [prepaid, postpaid_s]}
    valid_from: 2025-01-01T00:00:00Z
    valid_to: 2027-12-31T23:59:59Z
    caps: {max_shows: 3, period_days: 30, suppress_after_ignored: 4}
  - id: no_offer
    name: No offer
    headline: ''
    body: ''
    cta: ''
    product_id: null
    value: 0.0
    cost: 0.0
    purpose: service
    channels: [web, app]
    eligibility: []
    valid_from: 2025-01-01T00:00:00Z
    valid_to: 2099-12-31T23:59:59Z
    caps: {max_shows: 9, period_days: 1, suppress_after_ignored: 9}
"""


def _edit(old: str, new: str, count: int = 1) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, count)


# (what is wrong, catalogue text, exact error expected)
INVALID = [
    (
        "unknown op",
        _edit("op: in", "op: '=~'"),
        r"^<t>:14: offers\[0\]\.eligibility\[0\]\.op: Input should be '==', '!=', '<', '<=', '>', "
        r"'>=', 'in' or 'not_in'$",
    ),
    (
        "unknown field",
        _edit("field: plan", "field: colour"),
        r"^<t>:14: offers\[0\]\.eligibility\[0\]: unknown profile field 'colour' \(known: plan, ",
    ),
    (
        "in needs a list",
        _edit("op: in, value: [prepaid, postpaid_s]", "op: in, value: prepaid"),
        r"^<t>:14: offers\[0\]\.eligibility\[0\]: op in needs a non-empty list value$",
    ),
    (
        "== with a list",
        _edit("op: in,", "op: '==',"),
        r"^<t>:14: offers\[0\]\.eligibility\[0\]: op == needs a single value, not a list$",
    ),
    (
        "order op on text",
        _edit("op: in, value: [prepaid, postpaid_s]", "op: '<', value: prepaid"),
        r"^<t>:14: offers\[0\]\.eligibility\[0\]: op < needs a numeric field, 'plan' is text$",
    ),
    (
        "text for a number",
        _edit(
            "field: plan, op: in, value: [prepaid, postpaid_s]",
            "field: tenure_months, op: '>=', value: long",
        ),
        r"^<t>:14: offers\[0\]\.eligibility\[0\]: field 'tenure_months' is numeric, got 'long'$",
    ),
    (
        "negative value",
        _edit("value: 40.0", "value: -5"),
        r"^<t>:9: offers\[0\]\.value: Input should be greater than or equal to 0$",
    ),
    (
        "unknown channel",
        _edit("channels: [web, app]", "channels: [web, fax]"),
        r"^<t>:12: offers\[0\]\.channels\[1\]: Input should be 'web', 'app', 'email', 'sms', ",
    ),
    (
        "repeated channel",
        _edit("channels: [web, app]", "channels: [web, web]"),
        r"^<t>:3: offers\[0\]: channels are repeated$",
    ),
    (
        "dates reversed",
        _edit("valid_from: 2025-01-01T00:00:00Z", "valid_from: 2028-01-01T00:00:00Z"),
        r"^<t>:3: offers\[0\]: valid_to must be after valid_from$",
    ),
    (
        "naive date",
        _edit("valid_from: 2025-01-01T00:00:00Z", "valid_from: 2025-01-01T00:00:00"),
        r"^<t>:15: offers\[0\]\.valid_from: Input should have timezone info$",
    ),
    (
        "zero cap",
        _edit("max_shows: 3", "max_shows: 0"),
        r"^<t>:17: offers\[0\]\.caps\.max_shows: Input should be greater than 0$",
    ),
    (
        "missing caps",
        _edit("    caps: {max_shows: 3, period_days: 30, suppress_after_ignored: 4}\n", ""),
        r"^<t>:3: offers\[0\]\.caps: Field required$",
    ),
    (
        "misspelt key",
        _edit("    cost: 0.0\n", "    cots: 0.0\n"),
        r"^<t>:3: offers\[0\]\.cost: Field required$",
    ),
    (
        "extra key",
        _edit("    cost: 0.0\n", "    cost: 0.0\n    colour: red\n"),
        r"^<t>:11: offers\[0\]\.colour: Extra inputs are not permitted$",
    ),
    (
        "bad id",
        _edit("id: data_addon", "id: Data Addon"),
        r"^<t>:3: offers\[0\]\.id: String should match pattern '\^\[a-z\]\[a-z0-9_\]\*\$'$",
    ),
    (
        "repeated id",
        _edit("id: no_offer", "id: data_addon"),
        r"^<t>:18: offers\[1\]\.id: offer id 'data_addon' is repeated$",
    ),
    (
        "duplicate key",
        _edit("    value: 40.0\n", "    value: 40.0\n    value: 41.0\n"),
        r"^<t>:10: duplicate key 'value'$",
    ),
    (
        "no product",
        _edit("product_id: data_10gb", "product_id: null"),
        r"^<t>:3: offers\[0\]: product_id is required \(only no_offer sells nothing\)$",
    ),
    (
        "no_offer with value",
        _edit("    value: 0.0\n", "    value: 3.0\n"),
        r"^<t>:18: offers\[1\]: no_offer sells nothing: product_id null, value 0 and cost 0$",
    ),
    (
        "no no_offer",
        BASE[: BASE.index("  - id: no_offer")],
        r"^<t>:1: catalogue: the catalogue needs a 'no_offer' entry \(the control action\)$",
    ),
    (
        "not a mapping",
        "- just\n- a list\n",
        r"^<t>:1: catalogue: expected a mapping with 'version' and 'offers'$",
    ),
    (
        "broken YAML",
        _edit("channels: [web, app]", "channels: [web, app"),
        r"^<t>:13: invalid YAML: expected ',' or '\]', but got ':'$",
    ),
    (
        "empty offers",
        "version: 1\noffers: []\n",
        r"^<t>:2: offers: List should have at least 1 item after validation, not 0$",
    ),
    (
        "field the profile lacks",
        _edit("field: plan, op: in, value: [prepaid, postpaid_s]", "field: age, op: <, value: 26"),
        r"^<t>:14: offers\[0\]\.eligibility\[0\]: unknown profile field 'age' \(known: plan, arpu, "
        r"tenure_days, months_left_on_contract, consent_email, .*, tenure_months, months_left\)$",
    ),
    (
        "timestamp field",
        _edit(
            "field: plan, op: in, value: [prepaid, postpaid_s]",
            "field: last_visit_at, op: <, value: 3",
        ),
        r"^<t>:14: offers\[0\]\.eligibility\[0\]: field 'last_visit_at' is a UnixTimestamp "
        r"feature: rules compare text, numbers or booleans$",
    ),
    (
        "number for a boolean",
        _edit(
            "field: plan, op: in, value: [prepaid, postpaid_s]",
            "field: consent_sms, op: ==, value: 1",
        ),
        r"^<t>:14: offers\[0\]\.eligibility\[0\]: field 'consent_sms' is boolean, got 1$",
    ),
    (
        "order op on a boolean",
        _edit(
            "field: plan, op: in, value: [prepaid, postpaid_s]",
            "field: consent_sms, op: <, value: true",
        ),
        r"^<t>:14: offers\[0\]\.eligibility\[0\]: op < needs a numeric field, 'consent_sms' is "
        r"boolean$",
    ),
]


@pytest.mark.parametrize(("why", "text", "error"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_catalogues_fail_with_line_and_reason(why: str, text: str, error: str) -> None:
    with pytest.raises(CatalogError, match=error):
        parse_catalog(text, source="<t>")


def test_the_base_of_the_error_table_is_valid() -> None:
    assert parse_catalog(BASE).ids == ["data_addon", "no_offer"]


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(CatalogError, match=re.escape(f"{missing}: cannot read catalogue")):
        load_catalog(missing)


def test_shipped_catalogue_has_the_eight_offers() -> None:
    cat = load_catalog()
    assert cat.ids == [
        "device_upgrade",
        "data_addon",
        "retention_discount",
        "streaming_bundle",
        "family_plan",
        "prepaid_to_postpaid",
        "loyalty_reward",
        "no_offer",
    ]
    for offer in cat.offers:
        assert offer.cost <= offer.value
        assert offer.caps.max_shows >= 1
    assert cat.get("no_offer").product_id is None
    assert len({o.product_id for o in cat.offers}) == len(cat.offers)
    with pytest.raises(KeyError, match="unknown offer_id 'nope'"):
        cat.get("nope")


def test_eligibility_follows_the_rules() -> None:
    cat = load_catalog()
    at = datetime(2026, 3, 1, tzinfo=UTC)
    prepaid = {"plan": "prepaid", "tenure_months": 30.0, "months_left": None}
    ending = {"plan": "postpaid_m", "tenure_months": 30.0, "months_left": 2.0}
    ids = lambda p, ch: [o.id for o in cat.eligible(p, ch, at)]  # noqa: E731
    assert ids(prepaid, "sms") == [
        "data_addon",
        "prepaid_to_postpaid",
        "loyalty_reward",
        "no_offer",
    ]
    assert ids(ending, "call_centre") == [
        "device_upgrade",
        "retention_discount",
        "family_plan",
        "no_offer",
    ]
    # a missing field never matches, and validity dates apply
    assert "family_plan" not in ids({"plan": "postpaid_m"}, "web")
    assert cat.eligible(ending, "web", datetime(2030, 1, 1, tzinfo=UTC))[-1].id == "no_offer"
    assert len(cat.eligible(ending, "web", datetime(2030, 1, 1, tzinfo=UTC))) == 1


@pytest.mark.parametrize(
    ("rule", "profile", "expected"),
    [
        ({"field": "plan", "op": "==", "value": "prepaid"}, {"plan": "prepaid"}, True),
        ({"field": "plan", "op": "!=", "value": "prepaid"}, {"plan": "prepaid"}, False),
        ({"field": "plan", "op": "not_in", "value": ["prepaid"]}, {"plan": "postpaid_s"}, True),
        ({"field": "arpu", "op": ">", "value": 20}, {"arpu": 20.0}, False),
        ({"field": "arpu", "op": ">=", "value": 20}, {"arpu": 20.0}, True),
        ({"field": "months_left", "op": "<=", "value": 3}, {"months_left": float("nan")}, False),
        ({"field": "months_left", "op": "<", "value": 3}, {"months_left": -1.0}, True),
        ({"field": "plan", "op": "not_in", "value": ["prepaid"]}, {}, False),
        ({"field": "consent_sms", "op": "==", "value": True}, {"consent_sms": True}, True),
        (
            {"field": "basket_abandoned", "op": "!=", "value": True},
            {"basket_abandoned": True},
            False,
        ),
        ({"field": "purchases_30d", "op": ">=", "value": 2}, {"purchases_30d": 3}, True),
    ],
)
def test_rules_scalar_and_vectorised_agree(rule: dict, profile: dict, expected: bool) -> None:
    r = Rule(**rule)
    assert r.matches(profile) is expected
    frame = pd.DataFrame([profile]) if profile else pd.DataFrame(index=[0])
    assert bool(r.mask(frame)[0]) is expected


def test_every_rule_field_reaches_the_decision() -> None:
    """What serving evaluates rules on (``profile_v2`` names through ``profile_fields``) holds
    every field the shipped catalogue names: no rule can be silently never true."""
    import inspect

    from features.repo.feature_services import profile_v2
    from serving.deps import FeatureReader
    from serving.policy import profile_fields

    read = inspect.signature(FeatureReader.read_many_within).parameters["service"]
    assert read.default == "profile_v2"  # what decisions read
    served = {f.name: 1 for p in profile_v2.feature_view_projections for f in p.features}
    have = profile_fields(served)
    rules = [(o.id, r.field) for o in load_catalog().offers for r in o.eligibility]
    assert rules and all(have.get(field) is not None for _, field in rules), rules
    assert set(rule_fields()) == set(have)


def test_offer_mask_matches_is_eligible_on_random_profiles() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "plan": rng.choice(["prepaid", "postpaid_s", "postpaid_m", "postpaid_l"], 300),
            "tenure_months": rng.uniform(0, 60, 300),
            "months_left": np.where(rng.random(300) < 0.3, np.nan, rng.uniform(-3, 24, 300)),
            "arpu": rng.uniform(5, 50, 300),
        }
    )
    for offer in load_catalog().offers:
        scalar = [offer.is_eligible(row) for row in frame.to_dict("records")]
        assert offer.eligible_mask(frame).tolist() == scalar, offer.id


@pytest.mark.parametrize("missing", [None, float("nan"), np.nan, pd.NA, pd.NaT])
def test_every_kind_of_missing_value_fails_a_rule(missing: object) -> None:
    for rule in (Rule(field="months_left", op="<=", value=3),
                 Rule(field="plan", op="not_in", value=["prepaid"])):  # fmt: skip
        assert rule.matches({rule.field: missing}) is False


VALUE_RULES = "      - {field: value_tier, op: in, value: [top, middle]}\n" + (
    "      - {field: clv_12m, op: '>=', value: 250}\n"
)


def test_rules_read_the_customer_value_of_profile_v2() -> None:
    cat = parse_catalog(_edit("      - {field: plan, op: in, value: [prepaid, postpaid_s]}\n",
                              VALUE_RULES))  # fmt: skip
    addon = cat.get("data_addon")
    assert rule_fields()["value_tier"] == "text" and rule_fields()["clv_12m"] == "number"
    people = [
        {"value_tier": "top", "clv_12m": 900.0},
        {"value_tier": "middle", "clv_12m": 250.0},
        {"value_tier": "low", "clv_12m": 900.0},
        {"value_tier": "top", "clv_12m": 100.0},
        {"value_tier": None, "clv_12m": None},  # no CLV yet: unknown is out
    ]
    expected = [True, True, False, False, False]
    assert [addon.is_eligible(p) for p in people] == expected
    assert addon.eligible_mask(pd.DataFrame(people)).tolist() == expected


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ({"field": "value_tier", "op": ">", "value": "top"},
         "op > needs a numeric field, 'value_tier' is text"),
        ({"field": "value_tier", "op": "==", "value": 1},
         "field 'value_tier' is text, got 1"),
        ({"field": "clv_12m", "op": ">=", "value": "high"},
         "field 'clv_12m' is numeric, got 'high'"),
    ],
)  # fmt: skip
def test_bad_value_rules_name_the_field(rule: dict, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        Rule(**rule)
