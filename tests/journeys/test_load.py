"""Journey files: every bad file fails with the exact line a marketer reads; good ones load."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from features.schema import EVENT_TYPES
from journeys.definition import Journey, WaitStep
from journeys.load import (
    JourneyError,
    active_journeys,
    check_paths,
    load_journey,
    load_journeys,
    parse_journey,
    shipped_examples,
)
from nextbest.settings import Settings
from offers.catalog import NO_OFFER, Catalog, load_catalog
from offers.rules import KINDS, rule_fields

# A small valid journey the table below breaks one way at a time. Line numbers matter.
BASE = """\
name: basket
offers: [data_addon, device_upgrade]
entry:
  type: intent
  event: basket_add
  idle: 60m
  unless: [purchase]
goal:
  event: purchase
  product: entry
  within: 30d
exit:
  - event: purchase
rules:
  quiet_hours:
    email: "21:00-08:00"
steps:
  - id: email
    type: message
    channel: email
    next: opened
  - id: opened
    type: wait_for
    event: email_open
    of: email
    timeout: 24h
    on_event: done
    on_timeout: sms
  - id: sms
    type: message
    channel: sms
    next: done
  - id: done
    type: exit
"""


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _offer_ids(catalog: Catalog) -> str:
    return ", ".join(i for i in catalog.ids if i != NO_OFFER)


def _profile_fields() -> str:
    return ", ".join(f for f, k in rule_fields().items() if k in KINDS)


EVENTS = ", ".join(EVENT_TYPES)
CHANNELS = "web, app, email, sms, call_centre, store, paid_media, best_channel"
STEP_TYPES = "message, wait, wait_for, split, random_split, exit"
J = "bad.yaml:{}: journey basket: "

# (id, text replaced, replacement, expected line): one problem each.
ROWS = [
    (
        "yaml_syntax",
        "  idle: 60m",
        "  idle: [60m",
        "bad.yaml:7: journey basket: invalid YAML: expected ',' or ']', but got ':'",
    ),
    (
        "not_a_mapping",
        BASE,
        "- name: basket\n",
        "bad.yaml:1: journey ?: journey: expected a mapping with name, offers, entry and steps",
    ),
    (
        "unknown_top_level_key",
        "name: basket\n",
        "name: basket\ncolour: red\n",
        J.format(2) + "colour: unknown key (allowed: name, description, offers, entry, goal, "
        "exit, rules, steps)",
    ),
    (
        "duplicate_yaml_key",
        "    next: opened\n",
        "    next: opened\n    next: opened\n",
        J.format(22) + "steps[0] (email).next: key given twice (YAML keeps only the last)",
    ),
    (
        "offers_not_a_list",
        "offers: [data_addon, device_upgrade]",
        "offers: data_addon",
        J.format(2) + "offers: expected a list, got 'data_addon'",
    ),
    (
        "bad_name",
        "name: basket\n",
        "name: Basket\n",
        "bad.yaml:1: journey Basket: name: expected lower-case letters, digits and _, starting "
        "with a letter (at most 40), got 'Basket'",
    ),
    (
        "missing_entry",
        "entry:\n  type: intent\n  event: basket_add\n  idle: 60m\n  unless: [purchase]\n",
        "",
        J.format(1) + "entry: a journey needs an entry",
    ),
    (
        "duplicate_step_id",
        "  - id: done\n    type: exit\n",
        "  - id: done\n    type: exit\n  - {id: done, type: exit}\n",
        J.format(35) + "steps[4] (done).id: duplicate step id 'done'",
    ),
    (
        "unknown_next_step",
        "    next: done\n  - id: done",
        "    next: dne\n  - id: done",
        J.format(32) + "steps[2] (sms).next: unknown next step 'dne'",
    ),
    (
        "unreachable_step",
        "  - id: done\n    type: exit\n",
        "  - id: done\n    type: exit\n  - {id: orphan, type: exit}\n",
        J.format(35) + "steps[4] (orphan): unreachable from the first step",
    ),
    (
        "cycle_without_wait",
        "    next: done\n  - id: done",
        "    next: check\n  - {id: check, type: split, otherwise: sms, branches: "
        "[{when: [{field: plan, op: ==, value: prepaid}], next: done}]}\n  - id: done",
        J.format(29) + "steps[2] (sms): cycle with no wait: sms -> check -> sms",
    ),
    (
        "bad_duration",
        "timeout: 24h",
        "timeout: 1 hour",
        J.format(26) + "steps[1] (opened).timeout: expected a duration like 15m, 1h, 30d or 2w, "
        "got '1 hour'",
    ),
    (
        "wait_for_without_timeout",
        "    timeout: 24h\n",
        "",
        J.format(22) + "steps[1] (opened).timeout: a wait_for needs a timeout",
    ),
    (
        "timeout_not_positive",
        "timeout: 24h",
        "timeout: -1h",
        J.format(26) + "steps[1] (opened).timeout: must be positive, got -1h",
    ),
    (
        "quiet_hours_without_minutes",
        '"21:00-08:00"',
        '"21-08"',
        J.format(16) + "rules.quiet_hours.email: expected HH:MM-HH:MM, got '21-08'",
    ),
    (
        "bad_timezone",
        "rules:\n",
        "rules:\n  timezone: Europe/Londn\n",
        J.format(15) + "rules.timezone: unknown time zone 'Europe/Londn'",
    ),
    (
        "shares_not_summing_to_one",
        "steps:\n",
        "steps:\n  - {id: path, type: random_split, branches: [{name: a, share: 0.5, next: email}, "
        "{name: b, share: 0.4, next: sms}]}\n",
        J.format(18) + "steps[0] (path).branches: shares sum to 0.9, not 1",
    ),
    (
        "wait_with_duration_and_until",
        "    next: done\n  - id: done",
        "    next: pause\n  - {id: pause, type: wait, duration: 1h, until: '10:00', next: done}\n"
        "  - id: done",
        J.format(33) + "steps[3] (pause): give exactly one of duration and until",
    ),
    (
        "calendar_with_field_and_date",
        "  type: intent\n  event: basket_add\n  idle: 60m\n  unless: [purchase]\n",
        "  type: calendar\n  field: contract_end\n  date: 12-25\n",
        J.format(4) + "entry: give exactly one of field and date",
    ),
    (
        "count_without_within",
        "  idle: 60m\n",
        "  count: 3\n  idle: 60m\n",
        J.format(4) + "entry.within: required when count is more than 1",
    ),
    (
        "calendar_date_not_a_date",
        "  type: intent\n  event: basket_add\n  idle: 60m\n  unless: [purchase]\ngoal:\n"
        "  event: purchase\n  product: entry\n",
        "  type: calendar\n  date: 02-30\ngoal:\n  event: purchase\n",
        J.format(5) + "entry.date: '02-30' is not a date",
    ),
    (
        "unknown_step_type",
        "    type: exit\n",
        "    type: stop\n",
        J.format(34) + f"steps[3] (done).type: unknown step type 'stop' (known: {STEP_TYPES})",
    ),
    (
        "step_without_type",
        "    type: exit\n",
        "",
        J.format(33) + f"steps[3] (done).type: a step needs a type (one of: {STEP_TYPES})",
    ),
    (
        "message_without_channel",
        "    channel: sms\n",
        "",
        J.format(29) + "steps[2] (sms).channel: a message needs a channel",
    ),
    (
        "unknown_channel",
        "channel: sms",
        "channel: txt",
        J.format(31) + f"steps[2] (sms).channel: unknown channel 'txt' (known: {CHANNELS})",
    ),
    (
        "unknown_event_type",
        "event: email_open",
        "event: email_opend",
        J.format(24)
        + f"steps[1] (opened).event: unknown event type 'email_opend' (known: {EVENTS})",
    ),
    (
        "unknown_trigger_event",
        "  event: basket_add",
        "  event: basket",
        J.format(5) + f"entry.event: unknown event type 'basket' (known: {EVENTS})",
    ),
    (
        "event_the_message_cannot_cause",
        "    of: email\n",
        "    of: sms\n",
        J.format(24) + "steps[1] (opened).event: email_open cannot follow a message on sms (sms)",
    ),
]


def _catalogue_rows(catalog: Catalog) -> list[tuple[str, str, str, str]]:
    """Rows whose message lists the catalogue's offers or the profile's fields."""
    offers = _offer_ids(catalog)
    return [
        (
            "unknown_offer",
            "[data_addon, device_upgrade]",
            "[data_adon, device_upgrade]",
            J.format(2) + f"offers[0]: unknown offer 'data_adon' (known: {offers})",
        ),
        (
            "offer_not_on_channel",
            "[data_addon, device_upgrade]",
            "[family_plan]",
            J.format(31) + "steps[2] (sms).channel: none of this journey's offers can go on sms "
            "(offers that can: "
            + ", ".join(o.id for o in catalog.offers if "sms" in o.channels and o.id != NO_OFFER)
            + ")",
        ),
        (
            "unknown_profile_field",
            "steps:\n",
            "steps:\n  - {id: who, type: split, otherwise: email, branches: "
            "[{when: [{field: plann, op: ==, value: prepaid}], next: sms}]}\n",
            J.format(18) + "steps[0] (who).branches[0].when[0]: unknown profile field 'plann' "
            f"(known: {_profile_fields()})",
        ),
        (
            "unknown_goal_product",
            "  product: entry",
            "  product: phone",
            J.format(10) + f"goal.product: unknown product 'phone': give any, entry or an offer id "
            f"({offers})",
        ),
        (
            "entry_product_without_one",
            "  type: intent\n  event: basket_add\n  idle: 60m\n  unless: [purchase]\n",
            "  type: predictive\n  score: churn_risk\n  above: 0.3\n",
            J.format(9) + "goal.product: 'entry' is the product of the entry event, and a "
            "predictive trigger has none (only intent triggers on basket_add, basket_remove, "
            "product_view, checkout, purchase have one)",
        ),
        (
            "product_of_an_event_without_one",
            "  - event: purchase\n",
            "  - {event: complaint, product: data_addon}\n",
            J.format(13) + "exit[0].product: a complaint event names no product: use product: any",
        ),
    ]


def _check(catalog: Catalog, old: str, new: str, expected: str) -> None:
    assert old in BASE
    with pytest.raises(JourneyError) as err:
        parse_journey(BASE.replace(old, new, 1), "bad.yaml", catalog)
    assert err.value.problems == [expected]
    assert str(err.value) == expected


ALL_ROWS = ROWS + _catalogue_rows(load_catalog())


@pytest.mark.parametrize(
    ("old", "new", "expected"), [r[1:] for r in ALL_ROWS], ids=[r[0] for r in ALL_ROWS]
)
def test_bad_journey_fails_with_one_exact_line(
    catalog: Catalog, old: str, new: str, expected: str
) -> None:
    _check(catalog, old, new, expected)


def test_the_base_journey_is_valid(catalog: Catalog) -> None:
    journey = parse_journey(BASE, "base.yaml", catalog)
    assert journey.name == "basket" and [s.id for s in journey.steps][-1] == "done"


def test_every_problem_of_a_file_at_once(catalog: Catalog) -> None:
    """A broken step does not hide an unknown offer, a bad zone or a wrong share."""
    text = (
        BASE.replace("data_addon,", "data_adon,")
        .replace("rules:\n", "rules:\n  timezone: Mars/Base\n")
        .replace("timeout: 24h", "timeout: 1 hour")
        .replace("steps:\n", "steps:\n  - {id: path, type: random_split, branches: "
                 "[{name: a, share: 0.5, next: email}, {name: b, share: 0.4, next: sms}]}\n")
    )  # fmt: skip
    with pytest.raises(JourneyError) as err:
        parse_journey(text, "bad.yaml", catalog)
    lines = [p.split(": ", 2)[2] for p in err.value.problems]
    assert [p.split(":")[1] for p in err.value.problems] == ["2", "15", "19", "28"]
    assert lines == [
        f"offers[0]: unknown offer 'data_adon' (known: {_offer_ids(catalog)})",
        "rules.timezone: unknown time zone 'Mars/Base'",
        "steps[0] (path).branches: shares sum to 0.9, not 1",
        "steps[2] (opened).timeout: expected a duration like 15m, 1h, 30d or 2w, got '1 hour'",
    ]


def test_unquoted_times_are_times_not_base_60_numbers(catalog: Catalog) -> None:
    """Plain YAML reads 10:00 as 600; a journey file means ten o'clock."""
    pause_step = "  - {id: pause, type: wait, until: 10:00, next: done}\n"
    text = BASE.replace(
        "    next: done\n  - id: done", f"    next: pause\n{pause_step}  - id: done"
    )
    pause = parse_journey(text, "t.yaml", catalog).step("pause")
    assert isinstance(pause, WaitStep) and pause.until == time(10, 0)
    quiet = parse_journey(BASE.replace('"21:00-08:00"', "21:00-08:00"), "t.yaml", catalog)
    assert quiet.rules.quiet_hours["email"].start == time(21, 0)


def test_shipped_examples_load_and_validate(catalog: Catalog) -> None:
    journeys = load_journeys(shipped_examples(), catalog)
    names = [j.name for j in journeys]
    assert names == ["abandoned_basket", "churn_save", "contract_renewal", "onboarding", "winback"]
    kinds = {j.name: j.entry.type for j in journeys}
    assert kinds == {
        "abandoned_basket": "intent",
        "churn_save": "predictive",
        "contract_renewal": "calendar",
        "onboarding": "lifecycle",
        "winback": "behavioural",
    }
    winback = journeys[-1]
    assert [b.share for b in winback.first.branches] == [0.5, 0.5]
    renewal = journeys[2]
    assert renewal.entry.offset == timedelta(days=-60) and renewal.entry.at == time(9, 0)
    for journey in journeys:  # the file is the same journey as the model reads it
        assert Journey.model_validate(journey.model_dump(mode="json")).version == journey.version


def test_load_journey_names_the_file(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "j.yaml"
    path.write_text(BASE.replace("timeout: 24h", "timeout: 1 hour"), encoding="utf-8")
    with pytest.raises(JourneyError, match=r"^.*/j\.yaml:26: journey basket: steps\[1\]"):
        load_journey(path, catalog)
    path.write_text(BASE, encoding="utf-8")
    assert load_journey(path, catalog).name == "basket"


def test_a_name_in_two_files_is_an_error(tmp_path: Path, catalog: Catalog) -> None:
    (tmp_path / "a.yaml").write_text(BASE, encoding="utf-8")
    (tmp_path / "b.yml").write_text("# the same again\n" + BASE, encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a journey", encoding="utf-8")
    with pytest.raises(JourneyError) as err:
        load_journeys(tmp_path, catalog)
    assert err.value.problems == [
        f"{tmp_path / 'b.yml'}:2: journey basket: name: journey name 'basket' is also in "
        f"{tmp_path / 'a.yaml'}"
    ]
    journeys, problems = check_paths([tmp_path / "a.yaml", tmp_path / "a.yaml"], catalog)
    assert [j.name for j in journeys] == ["basket"] and problems == []  # one file given twice


def test_active_journeys_read_the_settings_folder(tmp_path: Path, catalog: Catalog) -> None:
    settings = Settings(home=tmp_path / "home")
    assert settings.journeys_path == tmp_path / "home" / "journeys"
    assert active_journeys(settings, catalog) == []  # no folder: nothing is active
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "basket.yaml").write_text(BASE, encoding="utf-8")
    chosen = Settings(home=tmp_path / "home", journeys_dir=folder)
    assert [j.name for j in active_journeys(chosen, catalog)] == ["basket"]
    (folder / "broken.yaml").write_text("name: broken\n", encoding="utf-8")
    with pytest.raises(JourneyError, match="broken.yaml:1: journey broken: entry: a journey"):
        active_journeys(chosen, catalog)
