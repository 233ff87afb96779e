"""Reading a case's history from the log, in stream order, without a durable consumer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from contracts.codec import EventDecoder
from contracts.envelope import Event
from contracts.errors import ContractError
from mesh.errors import BrokerError
from mesh.topology import Topology


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


async def read_raw(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    up_to: int | None = None,
    batch: int = 256,
) -> AsyncIterator[list[RawMessage]]:
    """Every message on `subject` (up to stream sequence `up_to`), in stream order, in
    batches, through an ephemeral ack-less consumer: nothing on the broker remembers
    the read."""
    try:
        subscription = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=30.0,
                mem_storage=True,
            ),
        )
    except nats.errors.Error as exc:
        raise BrokerError(f"read {subject}", repr(exc)) from exc
    try:
        info = await subscription.consumer_info()
        remaining = info.num_pending or 0
        while remaining > 0:
            try:
                messages = await subscription.fetch(min(batch, remaining), timeout=5)
            except (nats.errors.Error, TimeoutError) as exc:
                raise BrokerError(f"read {subject}", repr(exc)) from exc
            found: list[RawMessage] = []
            for msg in messages:
                remaining = msg.metadata.num_pending
                sequence = msg.metadata.sequence.stream
                if up_to is not None and sequence > up_to:
                    remaining = 0
                    break
                found.append(
                    RawMessage(
                        sequence=sequence,
                        subject=msg.subject,
                        body=msg.data,
                        headers=dict(msg.headers or {}),
                        stored_at=msg.metadata.timestamp,
                    )
                )
            if found:
                yield found
    finally:
        with contextlib.suppress(nats.errors.Error):
            await subscription.unsubscribe()


async def read_subject(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    decoder: EventDecoder | None = None,
    batch: int = 256,
    on_unreadable: Callable[[int, str, ContractError], None] | None = None,
) -> list[StoredEvent]:
    """Every event on `subject`, in stream order. A message that is not a valid event
    raises, unless `on_unreadable` is given: then it is reported there and skipped."""
    decoder = decoder or EventDecoder()
    stored: list[StoredEvent] = []
    async for messages in read_raw(js, stream, subject, batch=batch):
        for msg in messages:
            try:
                event = decoder.decode(msg.body)
            except ContractError as exc:
                if on_unreadable is None:
                    raise
                on_unreadable(msg.sequence, msg.subject, exc)
                continue
            stored.append(
                StoredEvent(
                    sequence=msg.sequence,
                    subject=msg.subject,
                    body=msg.body,
                    headers=msg.headers,
                    event=event,
                    stored_at=msg.stored_at,
                )
            )
    return stored


async def read_case(js: JetStreamContext, topology: Topology, case_id: str) -> list[StoredEvent]:
    return await read_subject(js, topology.cases_stream, topology.subjects.case_history(case_id))
