"""Views as rows and back: a view's fields are its columns, times are ISO-8601 text
with microseconds, dicts and lists are JSON text with sorted keys (see schema.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

import msgspec
import orjson
from sqlalchemy import Row

from contracts.eventstore_api import TimelineEntry
from services.eventstore.domain import LogRecord

# Columns holding JSON text (dicts and lists of a view).
_JSON_COLUMNS = frozenset({"parameters", "evidence", "determining_policies", "headers"})
V = TypeVar("V", bound=msgspec.Struct)


def timestamp(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def json_text(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:
        # Nested deeper than orjson writes (254 levels): an event's evidence is the
        # sender's to shape, and no shape of it may stop the projection.
        try:
            return msgspec.json.encode(value, order="sorted").decode()
        except (msgspec.EncodeError, RecursionError) as exc:
            return orjson.dumps({"unstorable": f"not kept as JSON: {exc}"[:300]}).decode()


def to_row(view: msgspec.Struct) -> dict[str, Any]:
    """A view as its row: field for column, times as ISO text, dicts and lists as JSON."""
    row = msgspec.structs.asdict(view)
    for name, value in row.items():
        if isinstance(value, datetime):
            row[name] = timestamp(value)
        elif isinstance(value, dict | list):
            row[name] = json_text(value)
    return row


def from_row(view_type: type[V], row: Row[Any]) -> V:
    """A row back as its view (columns the view lacks, such as stored bytes, ignored)."""
    values = {  # str(): SQLAlchemy's column names are a str subclass msgspec refuses
        str(name): orjson.loads(value) if name in _JSON_COLUMNS else value
        for name, value in row._mapping.items()
    }
    return msgspec.convert(values, view_type, strict=False)


def event_row(record: LogRecord, entry: TimelineEntry, chain: str) -> dict[str, Any]:
    """The timeline line, with the exact stored message an export carries."""
    return {
        **to_row(entry),
        "subject": record.subject,
        "headers": json_text(record.headers),
        "body": record.body,
        "leaf_hash": record.leaf.hex(),
        "chain_hash": chain,
    }
