"""Paid-media keys against the vendors' own helpers (bench extra): Google's
``google-ads-datamanager-util`` Formatter and Meta's ``facebook-business`` normalisers."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from features.paid_media import contact_keys, email_for, phone_for, sha256_hex

dmu = pytest.importorskip("google.ads.datamanager_util", reason="bench extra not installed")
fb_norm = pytest.importorskip(
    "facebook_business.adobjects.serverside.normalize", reason="bench extra not installed"
)
from facebook_business.adobjects.customaudience import CustomAudience  # noqa: E402

FORMATTER = dmu.Formatter()
META = fb_norm.Normalize

# raw e-mail, Google's form, Meta's form
EMAILS = [
    ("  John.Smith@Gmail.com ", "johnsmith@gmail.com", "john.smith@gmail.com"),
    ("JANE.DOE+news@googlemail.com", "janedoe@googlemail.com", "jane.doe+news@googlemail.com"),
    ("Max.Mustermann@Web.DE", "max.mustermann@web.de", "max.mustermann@web.de"),
    (
        "priya.patel161@HOTMAIL.CO.UK\n",
        "priya.patel161@hotmail.co.uk",
        "priya.patel161@hotmail.co.uk",
    ),
    ("\tanna+promo@example.org", "anna+promo@example.org", "anna+promo@example.org"),
    ("O.Brien@gmail.com", "obrien@gmail.com", "o.brien@gmail.com"),
]

# raw phone, default region, E.164; vendor_raw: the vendor helper reads the raw form itself
# (it has no default region: a national or 00-prefixed number needs its country code first)
PHONES = [
    ("07700 900123", "GB", "+447700900123", False),
    ("+44 7700 900123", "GB", "+447700900123", True),
    ("+44-7700-900-123", "DE", "+447700900123", True),
    ("0044 7700 900123", "DE", "+447700900123", False),
    ("(020) 7946 0958", "GB", "+442079460958", False),
    ("+44 (0)20 7946 0958", "GB", "+442079460958", False),
    ("0151 23456789", "DE", "+4915123456789", False),
    ("+49 151 2345 6789", "GB", "+4915123456789", True),
    ("0049 30 1234567", "GB", "+49301234567", False),
    ("030 1234567", "DE", "+49301234567", False),
]


@pytest.mark.parametrize(("raw", "google", "meta"), EMAILS)
def test_email_forms_match_the_vendor_helpers(raw: str, google: str, meta: str) -> None:
    assert email_for("google", raw) == google == FORMATTER.format_email_address(raw)
    assert email_for("meta", raw) == meta == META.normalize_field_skip_hashing("em", raw)
    # hashes: Google's HEX encoding, Meta's server-side and Custom Audience hashing
    assert sha256_hex(google) == FORMATTER.process_email_address(raw, dmu.Encoding.HEX)
    assert sha256_hex(meta) == META.normalize_field("em", raw)
    ca = CustomAudience.format_params(CustomAudience.Schema.email_hash, [raw])
    assert ca["payload"]["data"] == [sha256_hex(meta)]


@pytest.mark.parametrize(("raw", "region", "e164", "vendor_raw"), PHONES)
def test_phone_forms_match_the_vendor_helpers(
    raw: str, region: str, e164: str, vendor_raw: bool
) -> None:
    google, meta = phone_for("google", raw, region), phone_for("meta", raw, region)
    assert google == e164
    assert meta == e164[1:]
    given = raw if vendor_raw else e164
    assert FORMATTER.format_phone_number(given) == google
    assert FORMATTER.process_phone_number(given, dmu.Encoding.HEX) == sha256_hex(google)
    assert META.normalize_field_skip_hashing("ph", given) == meta
    assert META.normalize_field("ph", given) == sha256_hex(meta)
    multi = CustomAudience.format_params(
        [CustomAudience.Schema.MultiKeySchema.phone], [[given]], is_raw=True
    )
    assert multi["payload"]["data"] == [[sha256_hex(meta)]]


def test_national_forms_are_why_the_region_is_needed() -> None:
    """The vendor helper alone turns a national number into a wrong one: the reason we parse."""
    assert FORMATTER.format_phone_number("07700 900123") == "+07700900123"
    assert phone_for("google", "07700 900123", "GB") == "+447700900123"
    assert phone_for("google", "07700 900123", "DE") != phone_for("google", "07700 900123", "GB")


@pytest.mark.parametrize(
    "raw", [None, "", "   ", "no-at-sign", "two@@example.com", "a b@example.com", "+@gmail.com"]
)
def test_unusable_emails_give_no_key(raw: object) -> None:
    assert email_for("google", raw) is None


@pytest.mark.parametrize("raw", [None, "", "call me", "12", "+44"])
def test_unusable_phones_give_no_key(raw: object) -> None:
    assert phone_for("meta", raw, "GB") is None


def test_contact_keys_hash_each_platform_form_once() -> None:
    contacts = pd.DataFrame(
        {
            "customer_id": ["c1", "c1", "c2"],
            "email": ["J.S@gmail.com", "js@gmail.com", None],
            "phone": [None, "07700 900123", "+49 151 2345 6789"],
        }
    )
    keys = contact_keys(contacts, "GB")
    google = keys[(keys.customer_id == "c1") & (keys.platform == "google")]
    # gmail dots fold: one Google e-mail key for both records, two Meta ones
    assert google[google.kind == "email"]["key"].tolist() == [sha256_hex("js@gmail.com")]
    meta_mail = keys[
        (keys.customer_id == "c1") & (keys.platform == "meta") & (keys.kind == "email")
    ]
    assert len(meta_mail) == 2
    c2 = keys[keys.customer_id == "c2"].set_index("platform")["key"]
    assert c2["google"] == hashlib.sha256(b"+4915123456789").hexdigest()
    assert c2["meta"] == hashlib.sha256(b"4915123456789").hexdigest()
