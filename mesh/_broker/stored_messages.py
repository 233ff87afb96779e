"""Messages as the log stores them, and the events decoded from them.

Every way of reading the log (a stream reader, direct gets, the case reader service)
ends in the same two shapes: a `RawMessage`, the exact stored bytes and headers that
an auditor hashes and verifies, and a `StoredEvent`, the same message decoded. They
live apart from the readers so that code which only handles stored messages (the
dispatcher, trust checks, dead letters) need not import how they were read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from contracts.codec import EventDecoder
from contracts.envelope import Event
from contracts.errors import ContractError


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored: its stream sequence, subject, exact bytes and headers."""

    sequence: int
    subject: str
    body: bytes
    headers: dict[str, str]
    event: Event
    stored_at: datetime  # when it entered the stream: the broker's clock, not the signer's


@dataclass(frozen=True)
class RawMessage:
    """A stored message, not decoded: what an auditor hashes and verifies."""

    sequence: int
    subject: str
    body: bytes
    headers: dict[str, str]
    stored_at: datetime


def decoded(
    messages: list[RawMessage],
    decoder: EventDecoder | None = None,
    on_unreadable: Callable[[int, str, ContractError], None] | None = None,
) -> list[StoredEvent]:
    """The messages that are events, decoded. A message that is not a valid event is
    left out and reported to `on_unreadable` (left out silently without one)."""
    decoder = decoder or EventDecoder()
    events = []
    for message in messages:
        try:
            event = decoder.decode(message.body)
        except ContractError as exc:
            if on_unreadable is not None:
                on_unreadable(message.sequence, message.subject, exc)
            continue
        events.append(
            StoredEvent(
                sequence=message.sequence,
                subject=message.subject,
                body=message.body,
                headers=message.headers,
                event=event,
                stored_at=message.stored_at,
            )
        )
    return events
