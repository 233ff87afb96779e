"""The dead-letter stream: nothing is dropped, everything is kept with its reason.

A dead letter is the original body, byte for byte, on `<root>.dlq.<stream>.<consumer>`
(named after the message's original stream and the consumer that gave up on it),
with the original headers and these added:

    Mesh-Dlq-Reason            why, readable by a person (one line)
    Mesh-Dlq-Kind              malformed | signature | permanent | exhausted
    Mesh-Dlq-Original-Subject  where it was published
    Mesh-Dlq-Original-Stream / -Sequence   where it is stored (for replay and audit)
    Mesh-Dlq-Consumer          who gave up on it
    Mesh-Dlq-Deliveries        how many times it was tried

Its Nats-Msg-Id is derived from the original's stream and sequence and the consumer,
so dead-lettering the same delivery twice (a crash before term) keeps one copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from mesh.errors import BrokerError, PublishFailed
from mesh.topology import Topology

REASON = "Mesh-Dlq-Reason"
KIND = "Mesh-Dlq-Kind"
ORIGINAL_SUBJECT = "Mesh-Dlq-Original-Subject"
ORIGINAL_STREAM = "Mesh-Dlq-Original-Stream"
ORIGINAL_SEQUENCE = "Mesh-Dlq-Original-Sequence"
CONSUMER = "Mesh-Dlq-Consumer"
DELIVERIES = "Mesh-Dlq-Deliveries"
DEAD_LETTERED_AT = "Mesh-Dlq-At"
ORIGINAL_TIME = "Mesh-Dlq-Original-Time"  # when the original entered its stream
SOURCE = "Mesh-Dlq-Source"  # the external system that sent refused input

# Control headers that must not travel: they would make the DLQ publish conditional
# or de-duplicate it against the original.
_DROPPED_HEADERS = ("Nats-Msg-Id", "Nats-Expected-")
_MAX_REASON = 2000


class DeadLetterKind(Enum):
    MALFORMED = "malformed"  # not a valid event: bad JSON, unknown type, bad schema
    SIGNATURE = "signature"  # unsigned or signature does not verify
    PERMANENT = "permanent"  # the handler said it can never succeed
    EXHAUSTED = "exhausted"  # transient failures until max_deliver ran out
    INVALID_INPUT = "invalid_input"  # another system's input, refused at the ingress


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as read back from the stream, for inspection and replay."""

    sequence: int
    subject: str
    body: bytes
    headers: dict[str, str]

    @property
    def reason(self) -> str:
        return self.headers.get(REASON, "")

    @property
    def kind(self) -> str:
        return self.headers.get(KIND, "")

    @property
    def original_subject(self) -> str:
        return self.headers.get(ORIGINAL_SUBJECT, "")

    @property
    def original_sequence(self) -> int:
        return int(self.headers.get(ORIGINAL_SEQUENCE, "0"))

    @property
    def original_stream(self) -> str:
        return self.headers.get(ORIGINAL_STREAM, "")

    @property
    def consumer(self) -> str:
        return self.headers.get(CONSUMER, "")


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_REASON else flat[: _MAX_REASON - 1] + "…"


class DeadLetterSink:
    def __init__(self, js: JetStreamContext, topology: Topology, timeout: float = 5.0) -> None:
        self.js = js
        self.topology = topology
        self.timeout = timeout

    async def dead_letter(self, msg: Msg, kind: DeadLetterKind, reason: str) -> int:
        meta = msg.metadata
        received = dict(msg.headers or {})
        if msg.subject.startswith(self.topology.subjects.replay_prefix()):
            # A replay failed again: it is still the original message of the original
            # consumer, and is filed (and replayable) as such.
            origin = {
                key: received[key]
                for key in (
                    ORIGINAL_SUBJECT,
                    ORIGINAL_STREAM,
                    ORIGINAL_SEQUENCE,
                    ORIGINAL_TIME,
                    CONSUMER,
                )
                if key in received
            }
        else:
            origin = {
                ORIGINAL_SUBJECT: msg.subject,
                ORIGINAL_STREAM: meta.stream,
                ORIGINAL_SEQUENCE: str(meta.sequence.stream),
                ORIGINAL_TIME: meta.timestamp.isoformat(),
                CONSUMER: meta.consumer,
            }
        headers = {
            key: value for key, value in received.items() if not key.startswith(_DROPPED_HEADERS)
        }
        headers.update(origin)
        headers.update(
            {
                # Unique per delivery source: dead-lettering the same delivery twice
                # (a crash before term) keeps one copy.
                "Nats-Msg-Id": f"dlq:{meta.stream}:{meta.sequence.stream}:{meta.consumer}",
                REASON: _one_line(reason),
                KIND: kind.value,
                DELIVERIES: str(meta.num_delivered),
                DEAD_LETTERED_AT: datetime.now(UTC).isoformat(),
            }
        )
        subject = self.topology.subjects.dead_letter(origin[ORIGINAL_STREAM], origin[CONSUMER])
        try:
            ack = await self.js.publish(subject, msg.data, timeout=self.timeout, headers=headers)
        except nats.js.errors.APIError as exc:
            raise PublishFailed(subject, f"{exc.description} (code {exc.err_code})") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise PublishFailed(subject, repr(exc)) from exc
        return int(ack.seq)

    async def refused_input(
        self,
        *,
        received_on: str,
        body: bytes,
        reason: str,
        source: str,
        consumer: str,
        headers: dict[str, str] | None = None,
    ) -> int:
        """Keep input another system sent that never became an event (it failed the
        contract), with the reason: nothing is dropped, even what is refused.

        `headers` describe the kept body where the caller had to shape it (e.g. only a
        prefix of a body too big to keep, with the whole one's size and digest); they
        cannot replace the headers set here, nor carry broker control headers."""
        now = datetime.now(UTC).isoformat()
        # Every value is made one line: the sender chose the source and the subject.
        described = {
            name: _one_line(value)
            for name, value in (headers or {}).items()
            if not name.startswith(_DROPPED_HEADERS)
        }
        described.update(
            {
                ORIGINAL_SUBJECT: _one_line(received_on),
                ORIGINAL_STREAM: self.topology.ingress_stream,
                ORIGINAL_TIME: now,
                CONSUMER: consumer,
                REASON: _one_line(reason),
                KIND: DeadLetterKind.INVALID_INPUT.value,
                DEAD_LETTERED_AT: now,
                SOURCE: _one_line(source),
            }
        )
        subject = self.topology.subjects.dead_letter(self.topology.ingress_stream, consumer)
        try:
            ack = await self.js.publish(subject, body, timeout=self.timeout, headers=described)
        except nats.js.errors.APIError as exc:
            raise PublishFailed(subject, f"{exc.description} (code {exc.err_code})") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise PublishFailed(subject, repr(exc)) from exc
        return int(ack.seq)


async def read_dead_letters(
    js: JetStreamContext, topology: Topology, *, start: int = 1, limit: int = 100
) -> list[DeadLetter]:
    """Read dead letters by stream sequence (direct get: no consumer is created)."""
    letters: list[DeadLetter] = []
    sequence = start
    try:
        info = await js.stream_info(topology.dead_letter_stream)
    except nats.errors.Error as exc:
        raise BrokerError("read dead letters", repr(exc)) from exc
    last = info.state.last_seq
    replay_prefix = topology.subjects.replay_prefix()
    while sequence <= last and len(letters) < limit:
        try:
            raw = await js.get_msg(topology.dead_letter_stream, seq=sequence, direct=True)
        except nats.js.errors.NotFoundError:
            sequence += 1
            continue
        if (raw.subject or "").startswith(replay_prefix):
            sequence += 1  # a replay on its way back to its consumer, not a dead letter
            continue
        letters.append(
            DeadLetter(
                sequence=int(raw.seq or sequence),
                subject=raw.subject or "",
                body=raw.data or b"",
                headers=dict(raw.headers or {}),
            )
        )
        sequence += 1
    return letters


async def replay_dead_letter(js: JetStreamContext, topology: Topology, letter: DeadLetter) -> int:
    """Send a dead letter back to the one consumer that gave up on it (once its cause is
    fixed). It is not re-published to the case log: every other consumer has already
    handled it, and the audit log must not hold the same event twice. Its bytes and
    signature headers travel unchanged, so it still verifies against its original subject.
    """
    if not letter.original_stream or not letter.consumer:
        raise PublishFailed(letter.subject, "dead letter lacks its origin headers")
    subject = topology.subjects.replay(letter.original_stream, letter.consumer)
    headers = {
        key: value for key, value in letter.headers.items() if not key.startswith(_DROPPED_HEADERS)
    }
    headers["Nats-Msg-Id"] = f"replay:{letter.sequence}"
    try:
        ack = await js.publish(subject, letter.body, headers=headers)
    except (nats.errors.Error, nats.js.errors.APIError, TimeoutError) as exc:
        raise PublishFailed(subject, repr(exc)) from exc
    return int(ack.seq)
