"""Household and name rules of the linker, link_block's contract, and the messy generator."""

from __future__ import annotations

import pytest

from features import normalize as nz
from features.identity_eval import pair_counts
from features.identity_messy import SIZES, messy_records
from features.identity_records import prepare
from features.linkage import link_block
from features.schema import IDENTITY_INPUT_COLUMNS


def records(*rows: dict) -> list:
    """Prepared German records; ``id`` is the record_id, every other column optional."""
    import pandas as pd

    full = [{c: None for c in IDENTITY_INPUT_COLUMNS} | {"record_id": r["id"]} | r for r in rows]
    return prepare(pd.DataFrame(full)[list(IDENTITY_INPUT_COLUMNS)], "DE")


def block(*rows: dict):
    return link_block(records(*rows), max_size=60, max_names=2)


LAND = "030 1234567"  # a Berlin landline the household shares
FAMILY = "familie.mueller@web.de"


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("Johannes", "Hans", True),  # German short forms
        ("Katharina", "Kathi", True),
        ("Katharina", "Käthe", True),
        ("Margarete", "Gretel", True),
        ("Susanne", "Sussi", True),  # a misspelt short form
        ("Matthias", "Mattihas", True),  # transposed letters
        ("Sebastian", "Sebastin", True),  # a missing letter
        ("Wolfgang", "Wolfgangg", True),  # an extra letter
        ("Müller", "Mueller", True),  # umlaut written out
        ("Öztürk", "Oeztuerk", True),
        ("Andreas", "Andrea", False),  # two people's names, not a typo
        ("Daniel", "Daniela", False),
        ("Simon", "Simone", False),
        ("Christian", "Christina", False),
        ("Christian", "Christine", False),  # both shorten to Chris: still two names
        ("Karin", "Katharina", False),
        ("Jan", "Jana", False),
    ],
)
def test_german_names_match_as_people_write_them(a: str, b: str, same: bool) -> None:
    assert nz.names_match(nz.normalize_name(a), nz.normalize_name(b)) is same


def test_household_members_on_a_shared_landline_and_email_are_told_apart_by_name() -> None:
    links = block(
        {"id": "r1", "phone": "0151 11111111", "email": FAMILY, "first_name": "Johannes",
         "last_name": "Müller"},
        {"id": "r2", "phone": LAND, "email": FAMILY, "first_name": "Hans", "last_name": "Mueller"},
        {"id": "r3", "phone": LAND, "first_name": "Katharina", "last_name": "Müller"},
        {"id": "r4", "phone": "+49 30 1234567", "first_name": "Kathi", "last_name": "Müler"},
        {"id": "r5", "email": FAMILY, "first_name": "Kahtarina", "last_name": "Müller"},
        {"id": "r6", "phone": "0049 30 1234567", "first_name": "Jonas", "last_name": "Müller"},
    )  # fmt: skip
    assert links.labels == [0, 0, 1, 1, 1, 2]
    rules = {(a, b): rule for a, b, rule in links.links}
    assert rules[(0, 1)] == "name_in_shared_email"
    assert rules[(2, 3)] == "name_in_shared_landline"


def test_same_first_name_in_one_household_is_refused() -> None:
    """Father and son Hans Müller, each with his own mobile, share the landline and the family
    e-mail: never one customer, and a record with only the landline joins neither."""
    links = block(
        {"id": "r1", "phone": "0151 11111111", "email": FAMILY, "first_name": "Hans",
         "last_name": "Müller"},
        {"id": "r2", "phone": "0171 2222222", "email": FAMILY, "first_name": "Hans",
         "last_name": "Müller"},
        {"id": "r3", "phone": LAND, "email": FAMILY, "first_name": "Hans", "last_name": "Müller"},
    )  # fmt: skip
    assert len(set(links.labels)) == 3


def test_gendered_names_on_a_landline_stay_apart_but_are_a_typo_on_a_personal_email() -> None:
    on_landline = block(
        {"id": "r1", "phone": LAND, "first_name": "Andreas", "last_name": "Weber"},
        {"id": "r2", "phone": LAND, "first_name": "Andrea", "last_name": "Weber"},
    )
    assert on_landline.labels == [0, 1]
    on_own_email = block(
        {"id": "r1", "email": "andreas.weber7@gmx.de", "first_name": "Andreas",
         "last_name": "Weber"},
        {"id": "r2", "email": "andreas.weber7@gmx.de", "first_name": "Andrea",
         "last_name": "Weber"},
    )  # fmt: skip
    assert on_own_email.labels == [0, 0]
    assert on_own_email.links == [(0, 1, "same_email")]


def test_similar_names_join_on_a_personal_key_but_not_on_a_parents_mobile() -> None:
    """A typo in each name part joins two records on a mobile or e-mail only one person
    shows; Sara and Sandra on one mobile (a parent's, given for a child) are two names, so
    the mobile alone is not enough."""
    parent = block(
        {"id": "r1", "phone": "0160 26309870", "first_name": "Sandra", "last_name": "Walter"},
        {"id": "r2", "phone": "0160 26309870", "first_name": "Sara", "last_name": "Walter"},
    )
    assert parent.labels == [0, 1]
    on_mobile = block(
        {"id": "r1", "phone": "0179 14822957", "first_name": "Theesa", "last_name": "Weebr"},
        {"id": "r2", "phone": "+49 179 14822957", "first_name": "Theresa", "last_name": "Webre"},
    )
    assert on_mobile.links == [(0, 1, "similar_name_on_mobile")]
    on_email = block(
        {"id": "r1", "email": "sara.rossi990@gmail.com", "first_name": "Sara",
         "last_name": "Rosis"},
        {"id": "r2", "email": "sara.rossi990@gmail.com", "first_name": "Sara",
         "last_name": "Rsosi"},
    )  # fmt: skip
    assert on_email.links == [(0, 1, "similar_name_on_email")]
    namesakes = block(  # Karin and Katharina Kaiser: family e-mail and the mother's mobile
        {"id": "r1", "phone": "0179 18602378", "email": "familie.kaiser@web.de",
         "first_name": "Karin", "last_name": "Kaiser"},
        {"id": "r2", "phone": "0179 18602378", "email": "familie.kaiser@web.de",
         "first_name": "Katharina", "last_name": "Kaiser"},
    )  # fmt: skip
    assert namesakes.labels == [0, 1]


def test_an_ambiguous_short_form_joins_neither_person() -> None:
    """Alex shortens Alexander and Alexandra (whose short form Sandra is): on the family
    e-mail of Alexander and Sandra Möller it names neither."""
    links = block(
        {"id": "r1", "email": "familie.moeller@gmx.net", "phone": "0511 642339",
         "first_name": "Alexander", "last_name": "Möller"},
        {"id": "r2", "email": "familie.moeller@gmx.net", "first_name": "Sandra",
         "last_name": "Möller"},
        {"id": "r3", "email": "familie.moeller@gmx.net", "first_name": "Alex"},
    )  # fmt: skip
    assert len(set(links.labels)) == 3


def test_a_namesake_in_the_block_joins_a_person_across_landline_and_mobile() -> None:
    """Helmut's landline record and his mobile record share no key, but both are in his
    household's block (Erika links them) and no other Helmut Weber is."""
    links = block(
        {"id": "r1", "phone": LAND, "first_name": "Helmut", "last_name": "Weber"},
        {"id": "r2", "phone": "0151 3333333", "first_name": "Helmut", "last_name": "Weber"},
        {"id": "r3", "phone": LAND, "email": "erika.weber@web.de", "first_name": "Erika",
         "last_name": "Weber"},
        {"id": "r4", "phone": "0151 3333333", "email": "erika.weber@web.de",
         "first_name": "Erika", "last_name": "Weber"},
    )  # fmt: skip
    assert links.labels[0] == links.labels[1] != links.labels[2]
    assert (0, 1, "same_name_in_block") in links.links


def test_link_block_is_deterministic_and_labels_count_from_zero() -> None:
    frame = messy_records(400, seed=3)
    recs = prepare(frame, "DE", warnings=[])
    first = link_block(recs, max_size=60, max_names=2)
    again = link_block(recs, max_size=60, max_names=2)
    assert first == again
    assert first.labels[0] == 0 and set(first.labels) == set(range(max(first.labels) + 1))
    assert all(first.labels[a] == first.labels[b] for a, b, _ in first.links)


def test_split_sides_keep_records_apart_in_link_block() -> None:
    recs = records(
        {"id": "r1", "email": "a.b@web.de", "first_name": "Anna", "last_name": "Berg"},
        {"id": "r2", "email": "a.b@web.de", "first_name": "Anna", "last_name": "Berg"},
    )
    assert link_block(recs, max_size=60, max_names=2).labels == [0, 0]
    apart = link_block(recs, max_size=60, max_names=2, sides=[{(1, 0)}, {(1, 1)}])
    assert apart.labels == [0, 1]


def test_messy_generator_is_seeded_and_resolvable() -> None:
    a, b = messy_records(3000, seed=7), messy_records(3000, seed=7)
    assert a.equals(b) and not a.equals(messy_records(3000, seed=8))
    assert list(a.columns) == [*IDENTITY_INPUT_COLUMNS, "true_person_id"]
    assert SIZES == {"10k": 10_000, "129k": 129_000, "515k": 515_000}
    phones = a["phone"].dropna()
    assert phones.str.startswith("+49").any() and phones.str.startswith("0049").any()
    assert phones.str.match(r"^0\d").any()
    recs = prepare(a, "DE", warnings=[])
    labels = link_block(recs, max_size=60, max_names=2).labels
    import pandas as pd

    m = pair_counts(pd.Series(labels), a["true_person_id"])
    assert m["precision"] >= 0.995 and m["recall"] >= 0.95, m


@pytest.mark.parametrize(("n", "bad"), [(0, 0.0), (10, 1.0), (10, -0.1)])
def test_messy_generator_refuses_bad_arguments(n: int, bad: float) -> None:
    with pytest.raises(ValueError, match=r"^(n_records|bad_share): must be"):
        messy_records(n, bad_share=bad)
