"""nats-py's exceptions, mapped to the mesh's at one place.

    with broker_errors("read pending approval r-1"):
        entry = await bucket.get("r-1")

Inside the block, a nats-py error (timeout, no responders, connection closed, any
JetStream API error) becomes `BrokerError(operation, repr(exc))`, raised `from` it.
Handle the outcomes that mean something (a key not found, a wrong last sequence) inside
the block; what escapes it is a broker failure. A broker that refuses a subject to this
principal does not answer: the request times out and the refusal arrives on the
connection's error callback. Given the connection and the subject, a timeout the broker
explained that way is `PermissionDenied` (permanent), not a slow server (retryable).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors
from nats.aio.client import Client

from mesh._broker.connection import refused
from mesh.errors import BrokerError, PermissionDenied


@contextmanager
def broker_errors(
    operation: str, *, nc: Client | None = None, subject: str | None = None
) -> Iterator[None]:
    """Map nats-py's errors raised in the block to `BrokerError` (or, for a subject the
    broker refused on `nc`, `PermissionDenied`). Works around `await`s: the mapping
    happens where the exception leaves the block."""
    try:
        yield
    except TimeoutError as exc:  # nats.errors.TimeoutError is one too
        if nc is not None and subject is not None and (refusal := refused(nc, subject)):
            raise PermissionDenied(subject, refusal) from exc
        raise BrokerError(operation, repr(exc)) from exc
    except nats.errors.Error as exc:  # nats.js.errors.Error included
        raise BrokerError(operation, repr(exc)) from exc
