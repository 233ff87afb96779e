"""Event identifiers: UUIDv7, so ids sort by creation time.

A handler that emits events after reading one must emit the *same* ids if the input
is redelivered (a crash between publish and ack), so that JetStream's de-duplication
(`Nats-Msg-Id = event_id`) drops the second copy. `derived_event_id` gives such an
id: the UUIDv7 timestamp of the cause plus one millisecond (derived events sort
after their cause), and random bits taken from a hash of (cause, emitter, index).
"""

from __future__ import annotations

import hashlib
import uuid

import uuid_utils


def new_event_id() -> str:
    return str(uuid_utils.uuid7())


def uuid7_millis(event_id: str) -> int:
    """The Unix-millisecond timestamp inside a UUIDv7."""
    return uuid.UUID(event_id).int >> 80


def derived_event_id(cause_event_id: str, emitter: str, index: int) -> str:
    millis = (uuid7_millis(cause_event_id) + 1) & ((1 << 48) - 1)
    digest = hashlib.blake2b(
        f"{cause_event_id}|{emitter}|{index}".encode(), digest_size=10
    ).digest()
    rand = int.from_bytes(digest, "big")
    rand_a = (rand >> 68) & 0xFFF  # 12 bits
    rand_b = rand & ((1 << 62) - 1)  # 62 bits
    value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))
