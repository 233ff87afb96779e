"""Event identifiers: UUIDv7, so ids sort by creation time.

A handler that emits events after reading one must emit the *same* ids if the input
is redelivered (a crash between publish and ack), so that JetStream's de-duplication
(`Nats-Msg-Id = event_id`) drops the second copy. `derived_event_id` gives such an
id: the UUIDv7 timestamp of the cause plus one millisecond (derived events sort
after their cause), and random bits taken from a keyed hash of (case, cause, emitter,
index).

The case is in the hash, so the same cause id in two cases (a replayed or forged
event) never yields one derived id for two different events. The emitter's secret
key is the hash key, so nobody else can predict an agent's next id and take it first:
`Nats-Msg-Id` is de-duplicated stream-wide, and an id published first by someone
else would make JetStream drop the agent's real event as a "duplicate".
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


def derived_event_id(
    case_id: str | None, cause_event_id: str, emitter: str, index: int, key: bytes = b""
) -> str:
    millis = (uuid7_millis(cause_event_id) + 1) & ((1 << 48) - 1)
    digest = hashlib.blake2b(
        f"{case_id or ''}|{cause_event_id}|{emitter}|{index}".encode(), digest_size=10, key=key
    ).digest()
    rand = int.from_bytes(digest, "big")
    rand_a = (rand >> 68) & 0xFFF  # 12 bits
    rand_b = rand & ((1 << 62) - 1)  # 62 bits
    value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))
