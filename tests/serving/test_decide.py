"""The decision pipeline without HTTP, on the real catalogue, ledger and identity graph."""

from __future__ import annotations

import random
import re
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from offers.catalog import load_catalog
from record.assignment import assign_all
from record.tables import now
from serving import policy
from serving.decide import DecideRequest, decide
from serving.deps import Deps
from serving.schemas import EXAMPLE_REQUEST


def _req(**kw: Any) -> DecideRequest:
    return DecideRequest(**{"channel": "web", **kw})


def test_example_request_is_valid_and_decided(deps: Deps) -> None:
    r = decide(DecideRequest(**EXAMPLE_REQUEST), deps)
    assert r.decision_id and deps.ledger.decision(r.decision_id).context["basket"] == ["data_10gb"]


def test_unknown_visitor_gets_a_cold_start(deps: Deps) -> None:
    r = decide(_req(cookie_id="never-seen"), deps)
    assert r.customer_id is None and "cold start: unknown visitor" in r.reasons
    assert [o.offer_id for o in r.offers] == ["no_offer"]  # no profile: no rule can hold
    row = deps.ledger.decision(r.decision_id)
    assert row.offer_id == "no_offer" and row.propensity == 1.0


def test_identity_resolves_any_identifier(deps: Deps) -> None:
    from features.identity import Identifiers

    cid = deps.graph.link(Identifiers(email="Ann@Example.com", phone="07700 900123"))
    r = decide(_req(phone="+447700900123"), deps)
    assert r.customer_id == cid


def test_eligibility_and_logged_probability(deps: Deps) -> None:
    r = decide(_req(customer_id="c-post", max_offers=10), deps)
    row = deps.ledger.decision(r.decision_id)
    allowed = set(row.probabilities)
    assert "prepaid_to_postpaid" not in allowed and "device_upgrade" in allowed
    assert "retention_discount" not in allowed  # not offered on the web
    assert row.scores["dropped"]["prepaid_to_postpaid"].startswith("rule plan == 'prepaid'")
    assert sum(row.probabilities.values()) == pytest.approx(1.0)
    assert row.propensity == row.probabilities[row.offer_id] == r.offers[0].probability
    assert r.fallback and any(x.startswith("models:") for x in r.reasons)


def test_logged_probability_is_the_true_frequency(deps: Deps) -> None:
    """Draw many decisions: each offer's share of draws matches its logged probability."""
    deps.settings.epsilon = 0.3
    counts: Counter[str] = Counter()
    for _ in range(3000):
        r = decide(_req(customer_id="c-post"), deps, record=False)
        counts[r.offers[0].offer_id] += 1
    assert deps.ledger.counts()["decisions"] == 0
    expected = policy.epsilon_greedy({o: 0.0 for o in counts}, 0.3)  # no model: all tie
    for offer, n in counts.items():
        assert n / 3000 == pytest.approx(expected[offer], abs=0.03)


@pytest.mark.parametrize(
    ("customer", "channel", "allowed"),
    [
        (
            "c-post",
            "email",
            {
                "device_upgrade",
                "streaming_bundle",
                "family_plan",
                "data_addon",
                "retention_discount",
                "loyalty_reward",
                "no_offer",
            },
        ),
        ("c-post", "sms", {"loyalty_reward", "no_offer"}),  # no SMS consent: service only
        ("c-pre", "email", {"no_offer"}),  # loyalty needs 24 months of tenure
        ("c-pre", "web", {"data_addon", "prepaid_to_postpaid", "no_offer"}),
    ],
)
def test_consent_per_channel(deps: Deps, customer: str, channel: str, allowed: set[str]) -> None:
    r = decide(_req(customer_id=customer, channel=channel), deps)
    assert set(deps.ledger.decision(r.decision_id).probabilities) == allowed


def test_two_emails_a_week(deps: Deps) -> None:
    shown = []
    for _ in range(6):
        r = decide(_req(customer_id="c-post", channel="email"), deps)
        shown.append(r.offers[0].offer_id)
    real = [o for o in shown if o != "no_offer"]
    assert len(real) <= 2  # after two contacts only "no offer" is allowed on e-mail
    r = decide(_req(customer_id="c-post", channel="email"), deps)
    if len(real) == 2:
        assert set(deps.ledger.decision(r.decision_id).probabilities) == {"no_offer"}


def test_suppression_after_ignored_shows() -> None:
    offer = load_catalog().get("data_addon")  # suppress_after_ignored 4, max 4 per 30 days
    t = now()
    old = [("data_addon", t - timedelta(days=40 + i)) for i in range(4)]
    kw = dict(per_channel=Counter(), now=t, channel_caps={})
    assert policy.caps_ok(offer, "web", shows=old, last_response=None, **kw).startswith(
        "suppressed"
    )
    answered = t - timedelta(days=39)  # a response after the 4th show resets the count
    assert policy.caps_ok(offer, "web", shows=old, last_response=answered, **kw) is None


def test_holdout_gets_no_offer_but_a_row(deps: Deps) -> None:
    deps.settings.global_holdout_share = 0.2
    s = deps.settings
    cid = next(
        f"h{i}"
        for i in range(1000)
        if assign_all(
            f"h{i}", "nbo", global_share=0.2, experiment_share=0.0, salt=s.assignment_salt
        ).arm
        == "holdout"
    )
    r = decide(_req(customer_id=cid), deps)
    assert r.arm == "holdout" and r.offers == []
    row = deps.ledger.decision(r.decision_id)
    assert row.arm == "holdout" and row.offer_id is None and row.scores["holdout"] == "global"
    assert all(
        decide(_req(customer_id=cid, channel=c), deps).arm == "holdout" for c in ("app", "sms")
    )


def test_arbitration_on_incremental_value() -> None:
    cat = load_catalog()
    upgrade, addon = cat.get("device_upgrade"), cat.get("data_addon")
    # high propensity but no uplift, and a discount paid to people who would buy anyway
    sure_thing = policy.incremental_value(upgrade, 0.50, 0.50, 0.0, 0.0)
    persuadable = policy.incremental_value(addon, 0.10, 0.02, 0.0, 0.0)
    assert sure_thing == pytest.approx(-0.5 * 40.0) and persuadable == pytest.approx(0.08 * 40.0)
    retention = cat.get("retention_discount")
    assert policy.incremental_value(retention, 0.2, 0.1, 0.8, 1.0) > policy.incremental_value(
        retention, 0.2, 0.1, 0.0, 1.0
    )
    probs = policy.epsilon_greedy({"a": sure_thing, "b": persuadable}, 0.1)
    assert probs == {"a": pytest.approx(0.05), "b": pytest.approx(0.95)}


class Broken:
    """A dependency that loaded but fails at call time (a dead store, a corrupt model)."""

    versions = {"churn": "7"}
    version = "3"

    def __getattr__(self, name: str) -> Any:
        def fail(*a: Any, **k: Any) -> Any:
            raise ConnectionError(f"{name} is down")

        return fail


def test_failing_dependencies_fall_back(deps: Deps) -> None:
    deps.features, deps.models, deps.bandit = Broken(), Broken(), Broken()
    r = decide(_req(customer_id="c-post"), deps)
    assert r.fallback and r.offers
    text = " | ".join(r.reasons)
    for part in (
        "features: ConnectionError",
        "churn model: ConnectionError",
        "propensity model: ConnectionError",
        "bandit: ConnectionError",
    ):
        assert part in text
    assert deps.ledger.decision(r.decision_id).fallback is True


def test_no_catalogue_still_answers(deps: Deps) -> None:
    deps.catalog, deps.missing["catalog"] = None, "CatalogError: offers.yaml:3: bad"
    r = decide(_req(customer_id="c-post"), deps)
    assert r.offers == [] and "catalog: CatalogError: offers.yaml:3: bad" in r.reasons


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"channel": "fax"}, "channel\n  Input should be 'web'"),
        (
            {"channel": "web", "max_offers": 0},
            "max_offers\n  Input should be greater than or equal to 1",
        ),
        ({"channel": "web", "shoe_size": 9}, "shoe_size\n  Extra inputs are not permitted"),
        (
            {"channel": "web", "context": {"mood": "x"}},
            "context.mood\n  Extra inputs are not permitted",
        ),
        ({"channel": "web", "email": ""}, "email\n  String should have at least 1 character"),
        ({}, "channel\n  Field required"),
    ],
)
def test_bad_requests(body: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        DecideRequest(**body)


def test_rng_is_the_only_randomness(deps: Deps) -> None:
    deps.rng = random.Random(1)
    a = [
        decide(_req(customer_id="c-post"), deps, record=False).offers[0].offer_id for _ in range(20)
    ]
    deps.rng = random.Random(1)
    b = [
        decide(_req(customer_id="c-post"), deps, record=False).offers[0].offer_id for _ in range(20)
    ]
    assert a == b


def test_real_bandit_distribution_is_logged(deps: Deps) -> None:
    """With H6's VW policy the logged probabilities are its distribution over the allowed set."""
    from training.bandit import BanditPolicy, offer_features

    deps.bandit = BanditPolicy(offer_features(deps.catalog), exploration="epsilon", epsilon=0.2)
    r = decide(_req(customer_id="c-post", channel="email"), deps)
    row = deps.ledger.decision(r.decision_id)
    assert set(row.probabilities) == set(row.scores["value"])  # the allowed set, nothing else
    assert sum(row.probabilities.values()) == pytest.approx(1.0)
    assert row.propensity == row.probabilities[row.offer_id] > 0
    assert r.model_versions["bandit"] == deps.bandit.version


# --- holdouts: sticky for a person, whatever identity they arrive with (issue 12, items 6-7) ---


def _salt_that_splits(keys: list[str], deps: Deps) -> str:
    """An assignment salt under which hashing these keys as they are draws both arms: a
    re-draw on any of them would show as a person in two arms."""
    s = deps.settings
    for i in range(500):
        arms = {
            assign_all(
                k, s.experiment, global_share=0.0, experiment_share=0.5, salt=f"salt-{i}"
            ).arm
            for k in keys
        }
        if len(arms) == 2:
            return f"salt-{i}"
    raise AssertionError("no salt splits these keys")


def test_person_keeps_one_arm_from_cookie_to_email_to_merged_loyalty_record(deps: Deps) -> None:
    """Cookie, then e-mail, then a loyalty card that merges the web customer into an older
    loyalty record: every decision is in one arm, and every report line counts the person once."""
    from experiments.report import lines
    from experiments.report_units import ledger_units
    from features.identity import Identifiers

    graph = deps.graph
    loyal = graph.link(Identifiers(loyalty_id="LC-77"))  # the older CRM record
    web = graph.link(Identifiers(cookie_id="ck-ann"))
    deps.settings.experiment_holdout_share = 0.5
    deps.settings.assignment_salt = _salt_that_splits([web, loyal], deps)
    arms = [decide(_req(cookie_id="ck-ann"), deps).arm]
    graph.link(Identifiers(cookie_id="ck-ann", email="Ann@X.com"))
    arms.append(decide(_req(email=" ann@x.com"), deps).arm)
    assert graph.link(Identifiers(cookie_id="ck-ann", loyalty_id="lc 77")) == loyal  # merged
    arms += [decide(_req(loyalty_id="LC-77", channel=c), deps).arm for c in ("web", "store")]
    arms.append(decide(_req(customer_id=web), deps).arm)  # a channel still holding the old id
    assert len(set(arms)) == 1, arms
    units = ledger_units(deps.ledger.engine, 30, graph.canonical_ids())
    assert units["customer_id"].tolist() == [loyal] and units["arm"].tolist() == arms[:1]
    for line in lines(units, 30, 0.05):
        assert line.n_treated + line.n_holdout == 1, line


def test_merged_people_keep_their_earliest_arm_in_every_worker(deps: Deps) -> None:
    """Both ids were decided on before they were found to be one person: after the merge
    every worker (a fresh assigner) answers with the arm drawn first, the arm the report's
    first exposure counts the person in."""
    from features.identity import Identifiers
    from record.assignment import StickyAssigner

    graph = deps.graph
    loyal = graph.link(Identifiers(loyalty_id="LC-88"))
    web = graph.link(Identifiers(cookie_id="ck-bo"))
    deps.settings.experiment_holdout_share = 0.5
    deps.settings.assignment_salt = _salt_that_splits([web, loyal], deps)
    first = decide(_req(cookie_id="ck-bo"), deps).arm
    other = decide(_req(loyalty_id="LC-88"), deps).arm
    assert first != other  # two people, as far as anyone knew
    graph.link(Identifiers(cookie_id="ck-bo", loyalty_id="LC-88"))
    deps.assigner.flush()
    deps.assigner = StickyAssigner(deps.ledger)  # another worker, or this one after its ttl
    assert {decide(_req(**ids), deps).arm for ids in (
        {"cookie_id": "ck-bo"}, {"loyalty_id": "LC-88"}, {"customer_id": web}
    )} == {first}  # fmt: skip


@pytest.mark.parametrize(
    ("field", "spellings"),
    [
        ("email", ["Ann@X.com", "ann@x.com", " ANN@X.COM ", "ann@X.com"]),
        ("phone", ["07700 900123", "+44 7700 900123", "+447700900123", "0044 (0)7700-900123"]),
        ("loyalty_id", ["LC-1234", "lc 1234", "lc1234", "LC 12-34"]),
        ("login_id", ["Ann.Smith", "ann.smith", " ANN.SMITH"]),
    ],
)
def test_identifier_spellings_of_an_anonymous_visitor_land_in_one_arm(
    deps: Deps, field: str, spellings: list[str]
) -> None:
    deps.settings.experiment_holdout_share = 0.5
    raw = [f"{field}:{v.strip()}" for v in spellings]  # what a raw-identifier hash would see
    deps.settings.assignment_salt = _salt_that_splits(raw, deps)
    responses = [decide(_req(**{field: v}), deps) for v in spellings]
    assert all(r.customer_id is None for r in responses)  # unknown to the graph: anonymous
    assert len({r.arm for r in responses}) == 1, [r.arm for r in responses]


@pytest.mark.parametrize(
    ("campaign", "declared", "experiment"),
    [
        (None, [], "nbo"),
        ("nbo", [], "nbo"),
        ("spring_sale", ["spring_sale"], "spring_sale"),
        (
            "spring_sale",
            [],
            "`context.campaign`\n  unknown experiment 'spring_sale'; declared: nbo",
        ),
        (
            "Spring_Sale",
            ["spring_sale"],
            "`context.campaign`\n  unknown experiment 'Spring_Sale'; declared: nbo, spring_sale",
        ),
    ],
)
def test_a_channel_may_only_name_a_declared_experiment(
    deps: Deps, campaign: str | None, declared: list[str], experiment: str
) -> None:
    deps.settings.experiments = declared
    request = _req(customer_id="c-post", context={"campaign": campaign} if campaign else {})
    if "\n" in experiment:
        with pytest.raises(ValidationError, match=re.escape(experiment)):
            decide(request, deps)
        assert deps.ledger.counts()["decisions"] == 0
    else:
        assert decide(request, deps).experiment == experiment


def test_a_new_catalogue_offer_is_explored_while_the_bandit_ranks_the_others(deps: Deps) -> None:
    """A bandit trained before family_plan joined the catalogue: decisions still use it for
    the offers it knows (no ``bandit:`` fallback), family_plan gets the cold-start share as
    its logged probability, and ``/healthz`` lists it (it made every decision where
    family_plan was allowed fall back to epsilon-greedy)."""
    from training.bandit import BanditPolicy, offer_features

    known = {k: v for k, v in offer_features(deps.catalog).items() if k != "family_plan"}
    deps.bandit = BanditPolicy(known, exploration="epsilon", epsilon=0.2)
    share = deps.settings.bandit_cold_start_share
    r = decide(_req(customer_id="c-post"), deps)
    assert not [x for x in r.reasons if x.startswith("bandit")], r.reasons
    assert "cold start: bandit explores new offers family_plan" in r.reasons
    row = deps.ledger.decision(r.decision_id)
    assert row.probabilities["family_plan"] == pytest.approx(share) and share > 0
    rest = [o for o in row.probabilities if o != "family_plan"]
    ranked = deps.bandit.distribution({}, "web", {}, rest)  # the bandit's own ranking of them
    assert {o: row.probabilities[o] for o in rest} == pytest.approx(
        {o: (1 - share) * p for o, p in ranked.items()}
    )
    assert sum(row.probabilities.values()) == pytest.approx(1.0)
    assert row.propensity == row.probabilities[row.offer_id] > 0
    assert deps.health()["bandit_cold_start"] == {
        "offers": {"family_plan": 0},
        "share": share,
        "until_learned": deps.settings.bandit_cold_start_examples,
    }
    # only new offers: where family_plan is not allowed, the bandit alone decides
    pre = decide(_req(customer_id="c-pre", channel="app"), deps)
    assert not [x for x in pre.reasons if "bandit" in x]


# Item 3 of issue 12: every shown slot is logged with its true probability and counted.


def _by_enumeration(
    probs: dict[str, float], scores: dict[str, float], max_offers: int
) -> dict[tuple[str, int], float]:
    """P(offer at position) by summing over every offer that can be drawn first."""
    out: dict[tuple[str, int], float] = {}
    for drawn, p in probs.items():
        for k, o in enumerate(policy.rank(drawn, scores, max_offers)):
            out[(o, k)] = out.get((o, k), 0.0) + p
    return out


@pytest.mark.parametrize(
    ("probs", "scores", "max_offers"),
    [
        ({"a": 0.7, "b": 0.2, "c": 0.1}, {"a": 3.0, "b": 2.0, "c": 1.0}, 3),
        ({"a": 0.1, "b": 0.2, "c": 0.7}, {"a": 3.0, "b": 2.0, "c": 1.0}, 2),
        ({"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}, {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}, 3),
        ({"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05}, {"a": -1.0, "b": 2.0, "c": 2.0, "d": 5.0}, 4),
        ({"a": 1.0}, {"a": 1.0}, 3),
    ],
)
def test_slot_probability_is_the_chance_of_that_offer_in_that_position(
    probs: dict[str, float], scores: dict[str, float], max_offers: int
) -> None:
    exact = _by_enumeration(probs, scores, max_offers)
    for drawn in probs:
        slots = policy.slot_probabilities(drawn, probs, scores, max_offers)
        assert [o for o, _ in slots] == policy.rank(drawn, scores, max_offers)
        assert slots[0][1] == probs[drawn]  # position 0: the draw's own probability
        for k, (o, p) in enumerate(slots):
            assert p == pytest.approx(exact[(o, k)]), (drawn, o, k)


def test_runner_up_probability_is_its_frequency_in_that_slot(deps: Deps) -> None:
    """Draw many three-slot decisions: each (offer, position) appears as often as the
    probability the response gives it there."""
    deps.settings.epsilon = 0.3
    counts: Counter[tuple[str, int]] = Counter()
    told: dict[tuple[str, int], float] = {}
    n = 3000
    for _ in range(n):
        r = decide(_req(customer_id="c-post", max_offers=3), deps, record=False)
        for o in r.offers:
            counts[(o.offer_id, o.position)] += 1
            told[(o.offer_id, o.position)] = o.probability
    assert {k for _, k in counts} == {0, 1, 2}
    for key, seen in counts.items():
        assert seen / n == pytest.approx(told[key], abs=0.03), key


def test_every_shown_slot_is_logged_with_position_and_probability(deps: Deps) -> None:
    r = decide(_req(customer_id="c-post", max_offers=3), deps)
    row = deps.ledger.decision(r.decision_id)
    assert [(s["offer_id"], s["position"], s["probability"]) for s in row.slots] == [
        (o.offer_id, o.position, o.probability) for o in r.offers
    ]
    assert [s["position"] for s in row.slots] == [0, 1, 2]
    assert (row.slots[0]["offer_id"], row.slots[0]["probability"]) == (row.offer_id, row.propensity)


def test_each_reason_says_how_its_offer_got_its_place(deps: Deps) -> None:
    """The first offer is drawn (it may rank low on value: exploration), the others follow by
    expected value; no reason claims arbitration chose a drawn offer."""
    r = decide(_req(customer_id="c-post", max_offers=3), deps)
    first, *rest = r.offers
    assert first.reason.startswith(f"drawn with probability {first.probability:.2f}: ")
    assert rest and all(o.reason.startswith("next by expected value: ") for o in rest)
    for o in r.offers:
        value = f"expected incremental value {o.score:.3f}"
        tail = "no offer (adds nothing, by definition)" if o.offer_id == "no_offer" else value
        assert tail in o.reason, o.reason


def test_runner_ups_count_against_offer_caps_and_suppression(deps: Deps) -> None:
    """Without models every offer ties, so the extra slots always go to the first offers of
    the catalogue: counted, each stops at its own cap; uncounted, they are shown every time."""
    cat = load_catalog()
    shown: Counter[str] = Counter()
    for _ in range(12):
        r = decide(_req(customer_id="c-post", max_offers=3), deps)
        shown.update(o.offer_id for o in r.offers)
    for offer, n in shown.items():
        caps = cat.get(offer).caps
        assert n <= min(caps.max_shows, caps.suppress_after_ignored), (offer, n, shown)


def test_a_runner_up_offer_makes_the_decision_a_contact(deps: Deps) -> None:
    """Two e-mails whose drawn slot was "no offer" but whose second slot was a real offer are
    two contacts: the e-mail cap (2 a week) is reached."""
    from record.tables import DecisionRow

    for _ in range(2):
        slots = [{"offer_id": "no_offer", "position": 0, "probability": 0.5},
                 {"offer_id": "data_addon", "position": 1, "probability": 0.5}]  # fmt: skip
        deps.ledger.record_decision(
            DecisionRow(
                decision_id=uuid.uuid4().hex,
                ts=now(),
                customer_id="c-post",
                channel="email",
                experiment="nbo",
                arm="treatment",
                offer_id="no_offer",
                propensity=0.5,
                slots=slots,
            )  # fmt: skip
        )
    r = decide(_req(customer_id="c-post", channel="email"), deps)
    row = deps.ledger.decision(r.decision_id)
    assert set(row.probabilities) == {"no_offer"}
    assert row.scores["dropped"]["data_addon"] == "email contact cap 2 reached"


def test_the_profile_view_logs_what_it_shows(deps: Deps) -> None:
    from serving import actions

    view = actions.profile("c-post", deps, "web")
    row = deps.ledger.decision(view.recommended.decision_id)
    assert row is not None and len(row.slots) == len(view.recommended.offers) == 3
    assert [s["offer_id"] for s in row.slots] == [o.offer_id for o in view.recommended.offers]


def test_an_offer_for_top_value_customers_follows_their_tier(
    deps: Deps, profiles: dict[str, dict[str, Any]]
) -> None:
    """A rule on ``value_tier`` (profile_v2's customer value) gates an offer in a decision."""
    from offers.catalog import parse_catalog
    from tests.offers.test_catalog import BASE

    deps.catalog = parse_catalog(
        BASE.replace("{field: plan, op: in, value: [prepaid, postpaid_s]}",
                     "{field: value_tier, op: ==, value: top}")
    )  # fmt: skip
    shown = {}
    for tier in ("top", "low"):
        profiles["c-post"]["value_tier"] = tier
        r = decide(_req(customer_id="c-post", max_offers=5), deps)
        shown[tier] = deps.ledger.decision(r.decision_id).probabilities
    assert "data_addon" in shown["top"] and "data_addon" not in shown["low"]
