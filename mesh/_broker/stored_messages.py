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
from contracts.subjects import case_subject_of_work

# Set by the server on the work stream's copy of a case event: where it came from
# (`<stream> <sequence> <filter> <transform> <subject> …`), and which pin it came under.
# No client can publish a message carrying the first (the server refuses it).
SOURCE_HEADER = "Nats-Stream-Source"
PIN_HEADER = "Nats-Pin-Id"


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


def original_of_work(
    subject: str, body: bytes, headers: dict[str, str], copied_at: datetime, cases_stream: str
) -> RawMessage:
    """The case-log message a work-stream copy carries: its case subject (as published
    and signed), its sequence in the case log, its bytes and its own headers.
    `stored_at` is when the copy was made, moments after the original was stored: a
    key's validity is judged at that time (later, never earlier, than the original's)."""
    origin = headers.get(SOURCE_HEADER, "").split(" ")
    original_subject = case_subject_of_work(subject)
    if len(origin) < 5 or origin[0] != cases_stream or not origin[1].isdigit():
        raise ContractError(f"work message {subject} does not say it came from {cases_stream}")
    if original_subject not in origin[2:]:
        raise ContractError(f"work message {subject} says it came from another subject")
    return RawMessage(
        sequence=int(origin[1]),
        subject=original_subject,
        body=body,
        headers={k: v for k, v in headers.items() if k not in (SOURCE_HEADER, PIN_HEADER)},
        stored_at=copied_at,
    )


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
