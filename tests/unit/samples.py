"""One valid sample of each event type, built from its type hints."""

from __future__ import annotations

import datetime as dt
import types
import typing
from typing import Any, Literal

import msgspec

from contracts.envelope import Event


def _sample_value(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is str or annotation is Any:
        return "sample"
    if annotation is int:
        return 3
    if annotation is float:
        return 2.5
    if annotation is bool:
        return True
    if annotation is dt.datetime:
        return dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    if origin is Literal:
        return typing.get_args(annotation)[0]
    if origin in (typing.Union, types.UnionType):
        return _sample_value(next(a for a in typing.get_args(annotation) if a is not type(None)))
    if origin is list:
        return [_sample_value(typing.get_args(annotation)[0])]
    if origin is dict:
        return {"key": "value"}
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return _sample_struct(annotation)
    raise TypeError(f"no sample for {annotation!r}")


def _sample_struct(struct: type[msgspec.Struct]) -> Any:
    hints = typing.get_type_hints(struct)
    fields = {name: _sample_value(hints[name]) for name in struct.__struct_fields__}
    return struct(**fields)


def sample_event(event_type: type[Event]) -> Event:
    hints = typing.get_type_hints(event_type)
    return event_type(
        case_id="case-1",
        actor="sample-actor",
        payload=_sample_value(hints["payload"]),
    )
