"""The envelope every event carries, and the base class of every event type.

Each event type is a frozen msgspec Struct tagged by its `event_type` (a snake_case
past-tense name that is also the last token of its subject). The envelope fields sit
beside a typed `payload` in the same JSON object:

    {"event_type": "case_opened", "schema_version": 1, "event_id": "0193…",
     "case_id": "c-1", "correlation_id": "…", "causation_id": null,
     "actor": "ingress", "occurred_at": "2026-…Z", "payload": {…}}

Evolution rule: new fields get defaults, a field's type never changes, a breaking
change is a new event type (or a new schema_version with an upcaster from the old).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from contracts.ids import new_event_id

EventFamily = Literal["case", "registry", "ops"]
# A point in time that says its zone (RFC 3339 with an offset): compared with the log's
# times, a naive one would be off by the writer's zone, or not comparable at all.
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="event_type"):
    """Base of every event. Subclasses set `tag=` and declare `payload`."""

    # Which stream family the event belongs to; decides its subject.
    family: ClassVar[EventFamily] = "case"

    event_id: str = msgspec.field(default_factory=new_event_id)
    schema_version: int = 1
    case_id: str | None = None
    correlation_id: str = ""
    causation_id: str | None = None
    actor: str
    occurred_at: datetime = msgspec.field(default_factory=utc_now)

    def __post_init__(self) -> None:
        # A case's first event correlates with itself.
        if not self.correlation_id:
            msgspec.structs.force_setattr(self, "correlation_id", self.event_id)

    @classmethod
    def event_name(cls) -> str:
        tag = cls.__struct_config__.tag
        if not isinstance(tag, str):
            raise TypeError(f"{cls.__name__} is not a tagged event type")
        return tag

    def subject_key(self) -> str:
        """The token that places this event in its family (`mesh.<family>.<key>.<name>`)."""
        if self.case_id is None:
            raise ValueError(f"{self.event_name()} needs a case_id")
        return self.case_id

    def with_envelope(self, **changes: Any) -> Event:
        return msgspec.structs.replace(self, **changes)
