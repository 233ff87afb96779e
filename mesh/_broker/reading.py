"""Reading a case's history from the log, in stream order, without a durable consumer.

The conveniences most callers want: a subject's or a case's events, read by direct
gets (`mesh._broker.direct_get`) and decoded (`mesh._broker.stored_messages`). A
long or open-ended read goes through `mesh._broker.stream_reader` instead.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.js.client import JetStreamContext

from contracts.codec import EventDecoder
from contracts.errors import ContractError
from mesh._broker.connection import client_of
from mesh._broker.direct_get import read_direct
from mesh._broker.stored_messages import StoredEvent, decoded
from mesh._broker.topology import Topology


def _raise(_sequence: int, _subject: str, error: ContractError) -> None:
    raise error


async def read_subject(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    decoder: EventDecoder | None = None,
    batch: int = 256,
    on_unreadable: Callable[[int, str, ContractError], None] | None = None,
    at_least: int = 0,
) -> list[StoredEvent]:
    """Every event on `subject`, in stream order. A message that is not a valid event
    raises, unless `on_unreadable` is given: then it is reported there and skipped.
    `at_least`: see `read_direct`."""
    messages = await read_direct(client_of(js), stream, subject, batch=batch, at_least=at_least)
    return decoded(messages, decoder, on_unreadable or _raise)


async def read_case(
    js: JetStreamContext, topology: Topology, case_id: str, *, at_least: int = 0
) -> list[StoredEvent]:
    """The case's events; with `at_least`, a history that reaches that sequence of the
    case log (the event being handled): never one from a replica behind it."""
    return await read_subject(
        js, topology.cases_stream, topology.subjects.case_history(case_id), at_least=at_least
    )
