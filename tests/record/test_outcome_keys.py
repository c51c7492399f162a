"""The key spaces of outcomes: a caller's key stored under ``outcome:``, never equal to an
event's (``event:``) or an erased one's (``erased:``), and found as an older ledger spelt it."""

from __future__ import annotations

import hashlib

import pytest

from record.ledger import KEY_LENGTH, caller_key, event_key, legacy_keys

LONG = "k" * (KEY_LENGTH - len("outcome:") + 1)
STORED = [  # the caller's key -> as stored
    ("order-17", "outcome:order-17"),
    ("event:buy-9", "outcome:event:buy-9"),  # not the purchase event buy-9's key
    ("erased:abc", "outcome:erased:abc"),
    ("k" * (KEY_LENGTH - len("outcome:")), "outcome:" + "k" * (KEY_LENGTH - len("outcome:"))),
    (LONG, "outcome#" + hashlib.sha256(LONG.encode()).hexdigest()),  # too long with a prefix
]


@pytest.mark.parametrize(("key", "stored"), STORED)
def test_a_callers_key_is_stored_in_its_own_space(key: str, stored: str) -> None:
    assert caller_key(key) == stored and len(stored) <= KEY_LENGTH
    assert caller_key(key) != event_key(key.removeprefix("event:"))


LEGACY = [  # the caller's key -> as a ledger from before key spaces may hold it
    ("order-17", ["order-17"]),
    ("event:buy-9", []),  # that spelling was also a purchase event's: not the caller's
    ("outcome:x", []),  # a caller's key in the new space
    ("outcome#ab", []),
    ("erased:ab", []),  # an erased outcome's hash
]


@pytest.mark.parametrize(("key", "older"), LEGACY)
def test_a_callers_key_as_an_older_ledger_stored_it(key: str, older: list[str]) -> None:
    assert legacy_keys(key) == older
