"""Reading a case's history from the log, in stream order, without a durable consumer."""

from __future__ import annotations

from collections.abc import Callable
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
    stored: list[StoredEvent] = []
    try:
        info = await subscription.consumer_info()
        remaining = info.num_pending or 0
        while remaining > 0:
            messages = await subscription.fetch(min(batch, remaining), timeout=5)
            for msg in messages:
                remaining = msg.metadata.num_pending
                try:
                    event = decoder.decode(msg.data)
                except ContractError as exc:
                    if on_unreadable is None:
                        raise
                    on_unreadable(msg.metadata.sequence.stream, msg.subject, exc)
                    continue
                stored.append(
                    StoredEvent(
                        sequence=msg.metadata.sequence.stream,
                        subject=msg.subject,
                        body=msg.data,
                        headers=dict(msg.headers or {}),
                        event=event,
                        stored_at=msg.metadata.timestamp,
                    )
                )
    except (nats.errors.Error, TimeoutError) as exc:
        raise BrokerError(f"read {subject}", repr(exc)) from exc
    finally:
        await subscription.unsubscribe()
    return stored


async def read_case(js: JetStreamContext, topology: Topology, case_id: str) -> list[StoredEvent]:
    return await read_subject(js, topology.cases_stream, topology.subjects.case_history(case_id))
