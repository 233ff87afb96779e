"""The dead-letter stream: nothing is dropped, everything is kept with its reason.

A dead letter is the original body, byte for byte, on `<root>.dlq.<stream>.<consumer>`
(named after the message's original stream and the consumer that gave up on it: the
broker lets only that consumer publish there), with the original headers and these
added:

    Mesh-Dlq-Reason            why, readable by a person (one line)
    Mesh-Dlq-Kind              malformed | signature | permanent | exhausted
    Mesh-Dlq-Original-Subject  where it was published
    Mesh-Dlq-Original-Stream / -Sequence   where it is stored (for replay and audit)
    Mesh-Dlq-Consumer          who gave up on it
    Mesh-Dlq-Deliveries        how many times it was tried
    Mesh-Dlq-Filed-By / -Filing-Signature  the consumer's key and its signature over
                               `<stream>:<sequence>`: only it can have filed this

Its Nats-Msg-Id is derived from the delivery that gave up, so dead-lettering the same
delivery twice (a crash before term) keeps one copy. A replay (mesh._runtime.replays) sends the
consumer a pointer to the dead letter, and the consumer takes the message from the
log by sequence: what a dead letter's headers say is for people to read, never what
is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from contracts.subjects import consumer_of
from mesh._broker.stored_messages import RawMessage
from mesh._broker.topology import Topology
from mesh._trust.identity import Identity
from mesh.errors import BrokerError, PublishFailed

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
FILED_BY = "Mesh-Dlq-Filed-By"
FILING_SIGNATURE = "Mesh-Dlq-Filing-Signature"
# On a replay message: the sequence of the dead letter it replays (see mesh._runtime.replays).
REPLAY_OF = "Mesh-Replay-Of"

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
        """Who filed it: the last token of its subject, which the broker binds."""
        return consumer_of(self.subject)


def filing_statement(stream: str, sequence: int) -> bytes:
    """What the consumer that files a dead letter signs (under the dead letter's subject)."""
    return f"{stream}:{sequence}".encode()


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_REASON else flat[: _MAX_REASON - 1] + "…"


class DeadLetterSink:
    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        timeout: float = 5.0,
        *,
        identity: Identity | None = None,
        consumer: str | None = None,
    ) -> None:
        """`identity` and `consumer`: who files dead letters (a consumer's runtime); the
        ingress, which only keeps refused input, needs neither."""
        self.js = js
        self.topology = topology
        self.timeout = timeout
        self.identity = identity
        self.consumer = consumer

    async def dead_letter(
        self, msg: Msg, original: RawMessage, kind: DeadLetterKind, reason: str
    ) -> int:
        """File `original` (a message of the case log) as given up by this consumer;
        `msg` is the delivery that gave up (the original itself, or a replay of it)."""
        assert self.identity is not None, "only a consumer's runtime files dead letters"
        assert self.consumer is not None
        meta = msg.metadata
        stream = self.topology.cases_stream
        subject = self.topology.subjects.dead_letter(stream, self.consumer)
        headers = {
            key: value
            for key, value in original.headers.items()
            if not key.startswith(_DROPPED_HEADERS)
        }
        headers.update(
            {
                ORIGINAL_SUBJECT: original.subject,
                ORIGINAL_STREAM: stream,
                ORIGINAL_SEQUENCE: str(original.sequence),
                ORIGINAL_TIME: original.stored_at.isoformat(),
                CONSUMER: self.consumer,
                FILED_BY: self.identity.public_key,
                FILING_SIGNATURE: self.identity.sign(
                    subject, filing_statement(stream, original.sequence)
                ),
                # Unique per delivery: dead-lettering the same delivery twice (a crash
                # before term) keeps one copy; a replay that fails again is filed anew.
                "Nats-Msg-Id": f"dlq:{meta.stream}:{meta.sequence.stream}:{meta.consumer}",
                REASON: _one_line(reason),
                KIND: kind.value,
                DELIVERIES: str(meta.num_delivered),
                DEAD_LETTERED_AT: datetime.now(UTC).isoformat(),
            }
        )
        try:
            ack = await self.js.publish(
                subject, original.body, timeout=self.timeout, headers=headers
            )
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
    """Ask the one consumer that filed a dead letter (the last token of its subject,
    which the broker binds) to handle its message again, once the cause is fixed. What
    goes is a pointer to the dead letter; the consumer takes the message itself from
    the case log by sequence (mesh._runtime.replays). Nothing is re-published to the case log:
    every other consumer has already handled it, and the log must not hold an event
    twice."""
    filed = topology.subjects.parse_consumer(letter.subject)
    stream, consumer = filed.stream, filed.consumer
    if stream != topology.cases_stream:
        raise PublishFailed(
            letter.subject, "only messages of the case log are replayed (this is refused input)"
        )
    subject = topology.subjects.replay(stream, consumer)
    headers = {
        REPLAY_OF: str(letter.sequence),
        # For ordering the consumer's replays by case only; nothing is taken from it.
        ORIGINAL_SUBJECT: letter.original_subject,
        "Nats-Msg-Id": f"replay:{letter.sequence}",
    }
    try:
        ack = await js.publish(subject, b"", headers=headers)
    except (nats.errors.Error, nats.js.errors.APIError, TimeoutError) as exc:
        raise PublishFailed(subject, repr(exc)) from exc
    return int(ack.seq)
