"""Normalising identity records a chunk at a time, for the batch engine.

Same canonical forms as ``features.normalize`` (the tests hold the two equal), with two
shortcuts that matter at a million records: a phone written only with digits and separators
is parsed once per digit string (``0171 234-567`` and ``0171234567`` are one parse), and an
e-mail whose local part is a plain dot-atom is checked by a regular expression plus one
``email-validator`` call per distinct domain.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import pandas as pd

from features import normalize as nz
from features.identity_records import IdentityInputError
from features.schema import IDENTITY_INPUT_COLUMNS

NAME_FIELDS = ("first_name", "last_name")
_SEPARATORS = re.compile(r"[\s./\-]+")
_PHONE_CHARS = re.compile(r"^\+?[\d\s./\-]+$")
_ATEXT = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"^{_ATEXT}(\.{_ATEXT})*$")


def phone(value: str, region: str) -> str:
    """E.164 as ``normalize_phone``; separators dropped first when only they and digits occur."""
    value = value.strip()
    if _PHONE_CHARS.match(value):
        value = _SEPARATORS.sub("", value)
    return nz.normalize_phone(value, region)


@lru_cache(maxsize=100_000)
def _domain_ok(domain: str) -> bool:
    return nz._email_problem(f"a@{domain}") is None


def email(value: str) -> str | None:
    """Canonical e-mail as ``normalize_email``: the fast path only accepts what it accepts."""
    key = nz.email_key(value)
    if key is None:
        return None
    local, _, domain = key.rpartition("@")
    fast = local and len(local) <= 64 and len(key) <= 254 and _DOT_ATOM.match(local)
    if fast and _domain_ok(domain):
        return key
    return nz.normalize_email(value)


def parsers(region: str) -> dict[str, Callable[[str], str | None]]:
    """Column -> parser to canonical form; raises ``NormalizeError`` on an unusable value."""
    region = region.upper()
    return {
        "email": email,
        "phone": lambda v: phone(v, region),
        "loyalty_id": nz.loyalty_key,
        "login_id": nz.login_key,
        "cookie_id": nz.cookie_key,
        "first_name": nz.normalize_name,
        "last_name": nz.normalize_name,
    }


def normalise_chunk(chunk: pd.DataFrame, region: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Canonical identifiers and names of a chunk (None where blank or unusable) and the
    count of unusable values per column. Each distinct raw value is parsed once."""
    missing = [c for c in IDENTITY_INPUT_COLUMNS if c not in chunk.columns]
    if missing and len(chunk.columns) == 1:
        found = [d for d in ";\t|" if d in str(chunk.columns[0])]
        if found:
            reason = f"one column only; the delimiter must be ',' (found {found[0]!r})"
            raise IdentityInputError(None, None, "header", reason)
    if missing:
        raise IdentityInputError(None, None, ", ".join(missing), "missing from the input")
    out = pd.DataFrame({"record_id": chunk["record_id"].astype(str).str.strip()})
    unusable: dict[str, int] = {}
    for column, parse in parsers(region).items():
        raw = chunk[column].fillna("").astype(str)
        mapping: dict[str, str | None] = {"": None}
        for value in raw.unique():
            if value in mapping:
                continue
            try:
                mapping[value] = parse(value) if value.strip() else None
            except nz.NormalizeError:
                mapping[value] = None
        canonical = raw.map(mapping)
        out[column] = canonical.astype(object).where(canonical.notna(), None)
        unusable[column] = int((raw.str.strip().ne("") & out[column].isna()).sum())
    return out, unusable
