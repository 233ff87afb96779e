"""Encoding and decoding event bodies.

The fast path decodes straight into the tagged union of the catalog's types. Anything
the fast path refuses, or an older schema_version, takes the slow path: decode to a
plain object, upcast step by step, then convert; the error then names what is wrong.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from contracts.catalog import CATALOG, EventCatalog
from contracts.envelope import Event
from contracts.errors import MalformedEvent, UnknownEventType, UnsupportedSchemaVersion

_encoder = msgspec.json.Encoder()
_plain_decoder = msgspec.json.Decoder()


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


class EventDecoder:
    def __init__(self, catalog: EventCatalog = CATALOG) -> None:
        self.catalog = catalog
        union = Union[tuple(catalog.types.values())]  # type: ignore[valid-type]  # noqa: UP007
        self._typed = msgspec.json.Decoder(union)
        self._current = {name: catalog.current_version(name) for name in catalog.types}

    def decode(self, body: bytes) -> Event:
        try:
            try:
                event: Event = self._typed.decode(body)
            except msgspec.DecodeError:
                return self._decode_slow(body)
            if event.schema_version == self._current[event.event_name()]:
                return event
            return self._decode_slow(body)
        except RecursionError:
            # JSON nested deeper than any parser's stack: malformed, like any other
            # unreadable body (never an error that stops whoever reads the log).
            raise MalformedEvent("nested too deeply to read") from None

    def _decode_slow(self, body: bytes) -> Event:
        try:
            raw = _plain_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise MalformedEvent(f"not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise MalformedEvent(f"expected a JSON object, got {type(raw).__name__}")
        name = raw.get("event_type")
        if not isinstance(name, str):
            raise MalformedEvent("missing or non-string 'event_type'")
        if name not in self.catalog:
            raise UnknownEventType(name)
        raw = self._upcast(name, raw)
        try:
            return msgspec.convert(raw, self.catalog.type_of(name), strict=False)
        except msgspec.ValidationError as exc:
            raise MalformedEvent(f"{name}: {exc}") from None

    def _upcast(self, name: str, raw: dict[str, Any]) -> dict[str, Any]:
        current = self._current[name]
        version = raw.get("schema_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise MalformedEvent(f"{name}: schema_version must be a positive integer")
        while version < current:
            step = self.catalog.upcasters.get((name, version))
            if step is None:
                raise UnsupportedSchemaVersion(name, version, current)
            raw = step(dict(raw))
            version += 1
            raw["schema_version"] = version
        if version > current:
            raise UnsupportedSchemaVersion(name, version, current)
        return raw


_default_decoder = EventDecoder()


def decode(body: bytes) -> Event:
    return _default_decoder.decode(body)
