"""Reading stored messages by direct get (ADR-31): no consumer, one request a batch.

A direct get is answered from the stream's store without creating anything on the
broker, so it needs only `$JS.API.DIRECT.GET.<stream>` permission, which every agent
has for the case stream: it is how a case's history, one dead letter, or the
registry stream's newest change is read. Its answers carry the stored message's
facts as `Nats-*` headers, turned back here into a `RawMessage` with the same
`stored_at` a consumer's metadata would give.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import Header

from mesh._broker.stored_messages import RawMessage
from mesh.errors import BrokerError

T = TypeVar("T")


def broker_time(stamp: str) -> datetime:
    """An RFC 3339 `Nats-Time-Stamp` as the same datetime nats-py's message metadata
    gives for it (nanoseconds through a float, as nats-py does), so every reader of a
    message agrees on when it entered the log, to the microsecond."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    nanos = seconds * 1_000_000_000 + int((fraction + "000000000")[:9])
    return datetime.fromtimestamp(nanos / 1_000_000_000.0, UTC)


_DIRECT_HEADERS = frozenset(
    {
        "Nats-Stream",
        "Nats-Subject",
        "Nats-Sequence",
        "Nats-Time-Stamp",
        "Nats-Num-Pending",
        "Nats-Last-Sequence",
    }
)


# A replicated stream answers a direct get from any replica, a follower that has not
# applied the newest writes included: a read that must reach a sequence it knows is
# stored asks again, this many times, before it says so.
CATCH_UP_ATTEMPTS = 12


async def read_direct(
    nc: Client,
    stream: str,
    subject: str,
    *,
    batch: int = 256,
    timeout: float = 5.0,
    at_least: int = 0,
) -> list[RawMessage]:
    """Every message on `subject`, in order, by batched direct gets (ADR-31): no
    consumer is created, so a principal allowed `$JS.API.DIRECT.GET.<stream>` — every
    agent, for the case stream — can read a case's history. With `at_least`, the
    sequence of a message on `subject` the caller knows is stored (the event it is
    handling), a read from a replica that has not caught up with it is made again, so
    that nobody decides on a history older than what it is deciding about."""

    async def read() -> tuple[list[RawMessage], int]:
        found = await _read_direct_once(nc, stream, subject, batch, timeout)
        return found, found[-1].sequence if found else 0

    return await read_until(read, at_least, f"read {subject}", f"replica of {stream}")


async def read_until(
    read: Callable[[], Awaitable[tuple[T, int]]], at_least: int, what: str, source: str
) -> T:
    """`read()` (what it found, the newest sequence it reflects) again, with backoff,
    until that reaches `at_least`; BrokerError (retryable) when it never does. The one
    who needs the guarantee loops — never a service on someone else's say-so, or one
    asker's `at_least` from the future would hold the service for everyone."""
    for attempt in range(CATCH_UP_ATTEMPTS):
        found, newest = await read()
        if newest >= at_least:
            return found
        await asyncio.sleep(min(0.005 * 2**attempt, 0.5))
    raise BrokerError(what, f"no {source} answered with #{at_least} yet")


async def _read_direct_once(
    nc: Client, stream: str, subject: str, batch: int, timeout: float
) -> list[RawMessage]:
    found: list[RawMessage] = []
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        queue.put_nowait(msg)

    try:
        subscription = await nc.subscribe(inbox, cb=collect)
    except nats.errors.Error as exc:
        raise BrokerError(f"read {subject}", repr(exc)) from exc
    try:
        start = 1
        while True:
            request = {"batch": batch, "next_by_subj": subject, "seq": start}
            await nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox
            )
            while True:
                msg = await asyncio.wait_for(queue.get(), timeout)
                headers = dict(msg.headers or {})
                status = _status(headers)
                if status is not None:
                    break
                sequence = int(headers["Nats-Sequence"])
                found.append(
                    RawMessage(
                        sequence=sequence,
                        subject=headers["Nats-Subject"],
                        body=msg.data,
                        headers={k: v for k, v in headers.items() if k not in _DIRECT_HEADERS},
                        stored_at=broker_time(headers["Nats-Time-Stamp"]),
                    )
                )
                start = sequence + 1
            if status == "404" or (status == "204" and headers.get("Nats-Num-Pending") == "0"):
                return found
            if status != "204":
                raise BrokerError(f"read {subject}", f"direct get answered status {status}")
    except (nats.errors.Error, TimeoutError) as exc:
        raise BrokerError(f"read {subject}", repr(exc)) from exc
    finally:
        with contextlib.suppress(nats.errors.Error):
            await subscription.unsubscribe()


async def read_one(
    nc: Client, stream: str, sequence: int, *, timeout: float = 5.0
) -> RawMessage | None:
    """The message stored at `sequence` (a direct get), None if there is none."""
    try:
        msg = await nc.request(
            f"$JS.API.DIRECT.GET.{stream}", json.dumps({"seq": sequence}).encode(), timeout=timeout
        )
    except (nats.errors.Error, TimeoutError) as exc:
        raise BrokerError(f"read {stream} #{sequence}", repr(exc)) from exc
    headers = dict(msg.headers or {})
    status = _status(headers)
    if status == "404":
        return None
    if status is not None:
        raise BrokerError(f"read {stream} #{sequence}", f"direct get answered status {status}")
    return RawMessage(
        sequence=int(headers["Nats-Sequence"]),
        subject=headers["Nats-Subject"],
        body=msg.data,
        headers={k: v for k, v in headers.items() if k not in _DIRECT_HEADERS},
        stored_at=broker_time(headers["Nats-Time-Stamp"]),
    )


async def last_sequence(
    nc: Client, stream: str, subjects: str, *, what: str, timeout: float = 5.0
) -> int:
    """The stream sequence of the newest message on `subjects`, 0 if there is none:
    one direct get, answered from the server's memory. `what` names the read in errors."""
    request = json.dumps({"last_by_subj": subjects}).encode()
    try:
        reply = await nc.request(f"$JS.API.DIRECT.GET.{stream}", request, timeout=timeout)
    except (nats.errors.Error, TimeoutError) as exc:
        raise BrokerError(what, repr(exc)) from exc
    headers = reply.headers or {}
    if _status(headers) == "404":
        return 0
    sequence = headers.get("Nats-Sequence")
    if sequence is None:
        raise BrokerError(
            what, f"{headers.get('Status', '?')} {headers.get('Description', '')}".strip()
        )
    return int(sequence)


async def first_stored_at(
    nc: Client, stream: str, subjects: str, sequence: int, *, what: str, timeout: float = 5.0
) -> datetime:
    """When the first message on `subjects` at or after `sequence` entered the stream
    (one direct get); a BrokerError if there is none. `what` names the read in errors."""
    request = json.dumps({"seq": sequence, "next_by_subj": subjects}).encode()
    try:
        reply = await nc.request(f"$JS.API.DIRECT.GET.{stream}", request, timeout=timeout)
    except (nats.errors.Error, TimeoutError) as exc:
        raise BrokerError(what, repr(exc)) from exc
    headers = reply.headers or {}
    stamp = headers.get("Nats-Time-Stamp")
    if stamp is None:
        raise BrokerError(
            what, f"{headers.get('Status', '?')} {headers.get('Description', '')}".strip()
        )
    return broker_time(stamp)


def _status(headers: dict[str, str]) -> str | None:
    """The status of a direct-get answer, or None for a stored message. A stored message
    always comes with the server's `Nats-Sequence`, and may carry any header its
    publisher gave it — `Status` too — so a `Status` header alone proves nothing."""
    if "Nats-Sequence" in headers:
        return None
    return headers.get(Header.STATUS, "")
