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

BAD = [
    ({"channel": "fax"}, r"^channel: unknown channel 'fax' \(expected one of web, app,"),
    ({"event_type": "teleport"}, r"^event_type: event_type 'teleport' is not in the schema$"),
    ({"ts": "2026-01-05T10:00:00"}, r"^ts: timestamp has no timezone"),
    ({"ts": "yesterday"}, r"^ts: Input should be a valid datetime"),
    ({"value": -5.0}, r"^value: must be a number >= 0, got -5.0$"),
    ({"value": float("nan")}, r"^value: must be a number >= 0, got nan$"),
    ({"quantity": 0}, r"^quantity: must be >= 1, got 0$"),
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
