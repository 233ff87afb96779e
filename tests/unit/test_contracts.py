from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest

from contracts import (
    CATALOG,
    CaseOpened,
    CaseOpenedPayload,
    EventCatalog,
    EventDecoder,
    MalformedEvent,
    UnknownEventType,
    UnsupportedSchemaVersion,
    decode,
    derived_event_id,
    encode,
    new_event_id,
)
from contracts.envelope import Event
from tests.unit.samples import sample_event


@pytest.mark.parametrize("name", CATALOG.names())
def test_every_event_type_round_trips(name: str) -> None:
    event = sample_event(CATALOG.type_of(name))
    assert decode(encode(event)) == event
    assert msgspec.json.decode(encode(event))["event_type"] == name


def test_a_case_s_first_event_correlates_with_itself() -> None:
    opened = CaseOpened(
        case_id="c-1", actor="ingress", payload=CaseOpenedPayload(kind="k", source="s")
    )
    assert opened.correlation_id == opened.event_id
    assert uuid.UUID(opened.event_id).version == 7


def test_bad_json_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match="not JSON"):
        decode(b"{not json")


def test_a_json_array_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match="expected a JSON object"):
        decode(b"[1, 2]")


def test_an_unknown_type_is_named() -> None:
    with pytest.raises(UnknownEventType, match="'meteor_struck'"):
        decode(b'{"event_type": "meteor_struck", "actor": "x"}')


def test_a_wrong_field_type_names_the_field() -> None:
    body = msgspec.json.decode(encode(sample_event(CaseOpened)))
    body["payload"]["kind"] = 42
    with pytest.raises(MalformedEvent, match=r"payload\.kind"):
        decode(msgspec.json.encode(body))


def test_a_missing_required_field_is_named() -> None:
    body = msgspec.json.decode(encode(sample_event(CaseOpened)))
    del body["actor"]
    with pytest.raises(MalformedEvent, match="actor"):
        decode(msgspec.json.encode(body))


def test_a_newer_schema_version_is_refused() -> None:
    body = msgspec.json.decode(encode(sample_event(CaseOpened)))
    body["schema_version"] = 99
    with pytest.raises(UnsupportedSchemaVersion, match="schema_version 99"):
        decode(msgspec.json.encode(body))


# A type at version 2 whose v1 called the field `amount_cents` (an int of cents).
class _PaymentPayload(msgspec.Struct, frozen=True, kw_only=True):
    amount: str
    currency: str = "EUR"


class _PaymentMade(Event, frozen=True, kw_only=True, tag="payment_made"):
    schema_version: int = 2
    payload: _PaymentPayload


def _v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    payload = dict(raw["payload"])
    cents = payload.pop("amount_cents")
    payload["amount"] = f"{cents // 100}.{cents % 100:02d}"
    return {**raw, "payload": payload}


def test_old_versions_are_upcast_on_read() -> None:
    catalog = EventCatalog([_PaymentMade], upcasters={("payment_made", 1): _v1_to_v2})
    decoder = EventDecoder(catalog)
    v1 = msgspec.json.encode(
        {
            "event_type": "payment_made",
            "schema_version": 1,
            "event_id": new_event_id(),
            "case_id": "c-1",
            "actor": "payments",
            "occurred_at": "2026-01-02T03:04:05Z",
            "payload": {"amount_cents": 12345},
        }
    )
    event = decoder.decode(v1)
    assert isinstance(event, _PaymentMade)
    assert event.schema_version == 2
    assert event.payload.amount == "123.45"


def test_a_version_without_an_upcaster_is_refused() -> None:
    decoder = EventDecoder(EventCatalog([_PaymentMade]))
    v1 = msgspec.json.encode(
        {
            "event_type": "payment_made",
            "schema_version": 1,
            "actor": "p",
            "payload": {"amount_cents": 1},
        }
    )
    with pytest.raises(UnsupportedSchemaVersion, match="upcaster"):
        decoder.decode(v1)


def test_a_catalog_refuses_duplicates_and_orphan_upcasters() -> None:
    with pytest.raises(ValueError, match="twice"):
        EventCatalog([CaseOpened, CaseOpened])
    with pytest.raises(ValueError, match="unknown event type"):
        EventCatalog([CaseOpened], upcasters={("payment_made", 1): _v1_to_v2})


def test_derived_ids_are_stable_time_ordered_uuid7s() -> None:
    cause = new_event_id()
    first = derived_event_id("c-1", cause, "intake", 0, b"k")
    assert first == derived_event_id("c-1", cause, "intake", 0, b"k")
    assert first != derived_event_id("c-1", cause, "intake", 1, b"k")
    assert first != derived_event_id("c-1", cause, "fraud", 0, b"k")
    # The same cause id in another case (a replayed event) derives another id, and
    # without the emitter's key nobody can predict its id.
    assert first != derived_event_id("c-2", cause, "intake", 0, b"k")
    assert first != derived_event_id("c-1", cause, "intake", 0, b"other")
    assert uuid.UUID(first).version == 7
    assert uuid.UUID(first).variant == uuid.RFC_4122
    assert first > cause  # sorts after the event that caused it
