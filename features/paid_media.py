"""Customer-match keys for paid media: e-mails and phones normalised the way each platform
documents, then SHA-256 hex. Only these hashes are kept (``snapshots/paid_media_keys.parquet``,
written by ``features.build``); raw contact points stay in the source systems.

Google (Data Manager API, ``google-ads-datamanager-util``'s ``Formatter``): trimmed and
lower-cased e-mail, with dots and ``+tags`` removed from gmail.com / googlemail.com local parts;
phone in E.164 *with* the ``+``. Meta (Custom Audiences, ``facebook-business``): trimmed and
lower-cased e-mail (no gmail folding); phone as digits only, country code first, no ``+`` and no
leading zeros. National numbers become international through ``phonenumbers`` with the
settings' default region (``NEXTBEST_REGION``), which neither vendor helper does: their
helpers expect a number that already carries its country code.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import pandas as pd
import phonenumbers

Platform = Literal["google", "meta"]
PLATFORMS: tuple[Platform, ...] = ("google", "meta")
KEY_COLUMNS = ("customer_id", "platform", "kind", "key")
KEYS_PATH = "snapshots/paid_media_keys.parquet"
# identity sources whose e-mail and phone are the customer's own contact points
CONTACT_SOURCES = ("crm", "eshop", "loyalty", "newsletter")
_SPACE = re.compile(r"\s")
_GMAIL = ("gmail.com", "googlemail.com")


def email_for(platform: Platform, raw: object) -> str | None:
    """The platform's normal form of an e-mail address, or None when it is not one."""
    if not isinstance(raw, str):
        return None
    email = raw.strip().lower()
    if not email or _SPACE.search(email) or email.count("@") != 1:
        return None
    user, domain = email.split("@")
    if not user or "." not in domain:
        return None
    if platform == "google" and domain in _GMAIL:
        user = user.split("+", 1)[0].replace(".", "")
        if not user:
            return None
    return f"{user}@{domain}"


def phone_for(platform: Platform, raw: object, region: str) -> str | None:
    """The platform's normal form of a phone number (``region`` for national forms), or None
    when ``phonenumbers`` cannot read a possible number in it."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    text = raw.strip()
    if text.startswith("00"):  # the international prefix most of Europe dials
        text = "+" + text[2:]
    try:
        parsed = phonenumbers.parse(text, region.upper())
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return e164 if platform == "google" else e164[1:]


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def contact_keys(contacts: pd.DataFrame, region: str) -> pd.DataFrame:
    """Hashed keys (customer_id, platform, kind, key) of a frame of customer_id, email, phone:
    each platform's normal form hashed, duplicates dropped, unreadable values skipped."""
    rows: list[tuple[str, str, str, str]] = []
    for cid, email, phone in contacts[["customer_id", "email", "phone"]].itertuples(index=False):
        if not isinstance(cid, str):
            continue
        for platform in PLATFORMS:
            e = email_for(platform, email)
            if e is not None:
                rows.append((cid, platform, "email", sha256_hex(e)))
            p = phone_for(platform, phone, region)
            if p is not None:
                rows.append((cid, platform, "phone", sha256_hex(p)))
    out = pd.DataFrame(rows, columns=list(KEY_COLUMNS))
    return (
        out.drop_duplicates().sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)
    )


def keys_from_identities(identities: pd.DataFrame, resolved: pd.DataFrame, region: str):
    """:func:`contact_keys` of the contact-point records (``CONTACT_SOURCES``) mapped to the
    customers the identity graph resolved them to."""
    own = identities.loc[
        identities["source"].isin(CONTACT_SOURCES), ["record_id", "email", "phone"]
    ]
    mapped = own.merge(resolved[["record_id", "customer_id"]], on="record_id")
    return contact_keys(mapped.dropna(subset=["customer_id"]), region)
