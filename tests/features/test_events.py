"""The event schema: valid events pass, each malformed one fails naming its field and reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from features.events import Event, InvalidEvent, parse_event

GOOD = {
    "ts": "2026-01-05T10:00:00Z",
    "channel": "web",
    "event_type": "basket_add",
    "cookie_id": "ck-1",
    "product_id": "data_addon",
    "value": 10.0,
    "quantity": 1,
}

OUT_OF_RANGE = r"^ts: must fall between 1970-01-01 and 2200-01-01 \(UTC\)$"
# issue 15 items 3 and 6: every number, time and string of an event is bounded
BOUNDS = [
    ({"ts": "0001-01-01T00:00:00+14:00"}, OUT_OF_RANGE),  # not a UTC time at all: a 500 before
    ({"ts": "9999-12-31T23:59:59-14:00"}, OUT_OF_RANGE),
    ({"ts": "1497-03-01T00:00:00Z"}, OUT_OF_RANGE),  # pandas cannot hold it: the report broke
    ({"ts": "2200-01-01T00:00:00Z"}, OUT_OF_RANGE),
    ({"value": "Infinity"}, r"^value: must be a finite number >= 0, got inf$"),
    ({"value": "-Infinity"}, r"^value: must be a finite number >= 0, got -inf$"),
    ({"value": "1e400"}, r"^value: must be a finite number >= 0, got inf$"),
    ({"quantity": 2**70}, r"^quantity: Input should be less than or equal to 10000$"),
    ({"event_id": "e" * 65}, r"^event_id: String should have at most 64 characters$"),
    ({"event_id": "e" * 2**20}, r"^event_id: String should have at most 64 characters$"),
    ({"event_id": ""}, r"^event_id: String should have at least 1 character$"),
    ({"customer_id": "c" * 65}, r"^customer_id: String should have at most 64 characters$"),
    ({"email": "e" * 257}, r"^email: String should have at most 256 characters$"),
    ({"phone": "1" * 257}, r"^phone: String should have at most 256 characters$"),
    ({"loyalty_id": "l" * 257}, r"^loyalty_id: String should have at most 256 characters$"),
    ({"login_id": "l" * 257}, r"^login_id: String should have at most 256 characters$"),
    ({"cookie_id": "k" * 257}, r"^cookie_id: String should have at most 256 characters$"),
    ({"product_id": "p" * 65}, r"^product_id: String should have at most 64 characters$"),
    ({"campaign_id": "c" * 65}, r"^campaign_id: String should have at most 64 characters$"),
    ({"order_id": "o" * 129}, r"^order_id: String should have at most 128 characters$"),
    ({"channel": "w" * 2**20}, r"^channel: String should have at most 32 characters$"),
    ({"event_type": "t" * 33}, r"^event_type: String should have at most 32 characters$"),
    ({"consent_channel": "c" * 33}, r"^consent_channel: String should have at most 32 characters"),
]

BAD = [
    ({"channel": "fax"}, r"^channel: unknown channel 'fax' \(expected one of web, app,"),
    ({"event_type": "teleport"}, r"^event_type: event_type 'teleport' is not in the schema$"),
    ({"ts": "2026-01-05T10:00:00"}, r"^ts: must carry a timezone \(ISO 8601 with an offset, e\."),
    ({"ts": "yesterday"}, r"^ts: Input should be a valid datetime"),
    ({"value": -5.0}, r"^value: must be a finite number >= 0, got -5.0$"),
    ({"value": float("nan")}, r"^value: must be a finite number >= 0, got nan$"),
    ({"quantity": 0}, r"^quantity: Input should be greater than or equal to 1$"),
    ({"cookie_id": None}, r"^identifiers: no identifier at all \(give one of customer_id, email"),
    ({"cookie_id": "   "}, r"^identifiers: no identifier at all"),
    ({"value": None}, r"^value: required for a basket_add event$"),
    ({"event_type": "consent_change", "value": None}, r"^consent_channel: required for a consent"),
    (
        {"event_type": "consent_change", "consent_channel": "sms"},
        r"^consent_value: required for a consent_change event$",
    ),
    ({"consent_channel": "pigeon"}, r"^consent_channel: unknown channel 'pigeon'"),
    ({"colour": "red"}, r"^colour: unknown field$"),
    ({"channel": None}, r"^channel: Input should be a valid string$"),
    *BOUNDS,
]


@pytest.mark.parametrize(("patch", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_event_names_field_and_reason(patch: dict, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        parse_event({**GOOD, **patch})


def test_missing_required_field() -> None:
    data = dict(GOOD)
    del data["channel"]
    with pytest.raises(InvalidEvent, match=r"^channel: required$") as err:
        parse_event(data)
    assert err.value.field == "channel"


def test_good_event_is_typed_and_keeps_its_offset() -> None:
    event = parse_event({**GOOD, "ts": "2026-01-05T12:00:00+02:00", "email": " a@b.example "})
    assert isinstance(event, Event)
    assert event.ts.utcoffset() == timedelta(hours=2)
    assert event.ts.astimezone(UTC) == datetime(2026, 1, 5, 10, tzinfo=UTC)
    assert event.identifier_dict() == {"email": "a@b.example", "cookie_id": "ck-1"}
    assert event.event_id  # generated when the channel sends none


def test_consent_change_round_trip() -> None:
    event = parse_event(
        {
            **GOOD,
            "event_type": "consent_change",
            "channel": "email",
            "value": None,
            "consent_channel": "email",
            "consent_value": False,
        }
    )
    assert (event.consent_channel, event.consent_value) == ("email", False)


def test_bounds_keep_what_a_channel_sends() -> None:
    """The largest legal values pass: 64-character ids, 256-character identifiers, the
    largest quantity, any offset within the years."""
    event = parse_event({**GOOD, "event_id": "e" * 64, "customer_id": "c" * 64,
                         "email": "e" * 256, "quantity": 10_000,
                         "ts": "1970-01-01T00:00:00Z"})  # fmt: skip
    assert (len(event.event_id), event.quantity) == (64, 10_000)
    assert parse_event({**GOOD, "ts": "2199-12-31T09:59:59-14:00"}).ts.year == 2199
