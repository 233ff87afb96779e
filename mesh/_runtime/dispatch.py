"""Turning one delivered message into a settled one.

    delivered more than max_deliver times, never settled ───────────► dead-letter, term
      │  (the handler crashed or hung the process on every earlier delivery)
    decode ─ bad bytes / unknown type / unreadable version ─────────► dead-letter, term
      │
    envelope ─ subject and body disagree (type, case) ──────────────► dead-letter, term
      │
    verify (optional) ─ unsigned or signature does not match ───────► dead-letter, term
      │
    signer (optional, with a key directory current as of the message)
      ─ unknown, another actor's, suspended, revoked, or a type the
        actor's card in force then does not produce ──────────────────► dead-letter, term
      │
    handler (bounded by handler_timeout)
      ├ ok ─────────────────────────────────────────────────────────► ack
      ├ PermanentError / contract error ────────────────────────────► dead-letter, term
      └ anything else (transient, timeout, broker, bug)
            ├ deliveries left ─► nak(delay): exponential + jitter, and never sooner
            │                    than an open circuit breaker's retry_after
            └ none left ───────► dead-letter, term

The server-side consumer has no max_deliver: this dispatcher counts deliveries, so a
message whose last delivery crashes the process still comes back once more and is
dead-lettered then, instead of vanishing at the server's limit. Unknown exceptions
count as transient: a bug fixed within the retry window heals the message, and once
retries run out it is dead-lettered with the error. If the dead-letter publish itself
fails, the message is nak'ed (not terminated), so nothing is lost.

Returns None when the message is settled for good, or the NAK delay when it will come
back (the consumer loop holds the rest of the case until then).
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback

from nats.aio.msg import Msg

from contracts.codec import EventDecoder
from contracts.envelope import Event
from contracts.errors import ContractError
from contracts.subjects import Subjects
from mesh._broker.stored_messages import RawMessage, StoredEvent, original_of_work
from mesh._runtime.consumer import settle
from mesh._runtime.dead_letters import REPLAY_OF, DeadLetterKind, DeadLetterSink
from mesh._runtime.resilience import redelivery_delay
from mesh._sdk.agent import Agent, HandlerContext, Services
from mesh._trust.identity import SIGNER_HEADER, verify_headers
from mesh._trust.key_directory import KeyDirectory
from mesh.errors import (
    CircuitOpen,
    MeshError,
    PermanentError,
    PermissionDenied,
    ReplayRefused,
    SignatureError,
)

log = logging.getLogger(__name__)


class EventDispatcher:
    def __init__(
        self,
        agent: Agent,
        *,
        services: Services,
        dead_letters: DeadLetterSink,
        subjects: Subjects,
        cases_stream: str,
        max_deliver: int,
        retry_base_delay: float,
        retry_max_delay: float,
        handler_timeout: float,
        verify_signatures: bool = False,
        key_directory: KeyDirectory | None = None,
        decoder: EventDecoder | None = None,
    ) -> None:
        self.agent = agent
        self.services = services
        self.dead_letters = dead_letters
        self.subjects = subjects
        self.cases_stream = cases_stream
        self.max_deliver = max_deliver
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.handler_timeout = handler_timeout
        self.verify_signatures = verify_signatures
        self.key_directory = key_directory
        self.decoder = decoder or EventDecoder()
        self._rng = random.Random()
        self.agent_id = agent.card.agent_id

    async def __call__(self, msg: Msg) -> float | None:
        delivery = msg.metadata.num_delivered
        try:
            original = await self._original(msg)
        except ReplayRefused as exc:
            # A pointer to nothing this consumer may handle: the replay message stays in
            # the dead-letter stream, where it was published; nothing is delivered.
            log.warning("%s: %s", self.agent_id, exc)
            await settle(msg.term())
            return None
        except ContractError as exc:
            if not msg.subject.startswith(self.subjects.work_prefix()):
                return await self._retry_or_give_up(msg, None, exc)
            # A work-stream copy that does not lead back to the case log (only the
            # server writes that stream, so: a server or a stream config gone wrong).
            # It cannot be filed as a dead letter of the log, whose message it does not
            # prove; retrying cannot change it. It stays in the work stream, where it
            # is, and the operator is told where; the log keeps whatever it had.
            meta = msg.metadata
            log.error(  # noqa: TRY400 - the reason is the message; no traceback helps
                "%s: %s #%d is not a copy of the case log (%s); not handled, left in %s",
                self.agent_id,
                msg.subject,
                meta.sequence.stream,
                exc,
                meta.stream,
            )
            await settle(msg.term())
            return None
        except MeshError as exc:
            return await self._retry_or_give_up(msg, None, exc)
        if delivery > self.max_deliver:
            return await self._dead_letter(
                msg,
                original,
                DeadLetterKind.EXHAUSTED,
                f"delivered {delivery} times and never settled: the handler crashed or "
                f"hung the agent each time (limit {self.max_deliver})",
            )
        if self.key_directory is not None:
            try:
                # Never judge a message by a directory older than it: a revocation (or
                # a registration) stored just before it must count.
                await self.key_directory.ensure_current(original.stored_at)
            except MeshError as exc:
                return await self._retry_or_give_up(msg, original, exc)
        try:
            event = self._read(original)
        except ContractError as exc:
            return await self._dead_letter(msg, original, DeadLetterKind.MALFORMED, str(exc))
        except SignatureError as exc:
            return await self._dead_letter(msg, original, DeadLetterKind.SIGNATURE, str(exc))
        handler = self.agent.handlers.get(event.event_name())
        if handler is None:
            return await self._dead_letter(
                msg,
                original,
                DeadLetterKind.PERMANENT,
                f"agent {self.agent_id} has no handler for {event.event_name()}",
            )
        ctx = HandlerContext(
            agent=self.agent,
            event=event,
            delivery=delivery,
            stream_sequence=original.sequence,
            services=self.services,
            written_at=original.stored_at,
            max_deliver=self.max_deliver,
            message=StoredEvent(
                sequence=original.sequence,
                subject=original.subject,
                body=original.body,
                headers=original.headers,
                event=event,
                stored_at=original.stored_at,
            ),
        )
        try:
            async with asyncio.timeout(self.handler_timeout):
                await handler(event, ctx)
        except (PermanentError, PermissionDenied, ContractError) as exc:
            return await self._dead_letter(msg, original, DeadLetterKind.PERMANENT, _describe(exc))
        except TimeoutError as exc:
            failure = TimeoutError(f"handler ran longer than {self.handler_timeout}s")
            failure.__traceback__ = exc.__traceback__
            return await self._retry_or_give_up(msg, original, failure)
        except Exception as exc:
            return await self._retry_or_give_up(msg, original, exc)
        await settle(msg.ack())
        return None

    async def _original(self, msg: Msg) -> RawMessage:
        """The case-log message this delivery carries: the delivery itself, or — for a
        replay, which only points at a dead letter — the message the dead letter names,
        read from the log by sequence (its subject, bytes and broker time)."""
        if msg.subject.startswith(self.subjects.work_prefix()):
            meta = msg.metadata
            return original_of_work(
                msg.subject, msg.data, msg.headers or {}, meta.timestamp, self.cases_stream
            )
        if not msg.subject.startswith(self.subjects.replay_prefix()):
            meta = msg.metadata
            return RawMessage(
                sequence=meta.sequence.stream,
                subject=msg.subject,
                body=msg.data,
                headers=msg.headers or {},
                stored_at=meta.timestamp,
            )
        pointer = (msg.headers or {}).get(REPLAY_OF, "")
        if not pointer.isdigit():
            raise ReplayRefused(0, f"{msg.subject} carries no dead-letter sequence")
        return await self.services.replayed(int(pointer))

    def _read(self, original: RawMessage) -> Event:
        subject = original.subject
        event = self.decoder.decode(original.body)
        parsed = self.subjects.parse(subject)
        if parsed.event_type != event.event_name():
            raise _EnvelopeMismatch(subject, f"body is a {event.event_name()!r}")
        if parsed.family == "case" and parsed.key != event.case_id:
            raise _EnvelopeMismatch(subject, f"body belongs to case {event.case_id!r}")
        if self.verify_signatures:
            verify_headers(subject, original.body, original.headers)
        if self.key_directory is not None:
            signer = original.headers.get(SIGNER_HEADER)
            if not signer:
                raise SignatureError(subject, "unsigned: no Mesh-Signer header")
            self.key_directory.check(
                signer, event.actor, original.stored_at, subject, event.event_name()
            )
        return event

    async def _retry_or_give_up(
        self, msg: Msg, original: RawMessage | None, exc: BaseException
    ) -> float | None:
        """`original` None: what the delivery carries is not known yet (a replay whose
        dead letter could not be read); it is never dead-lettered without it."""
        delivery = msg.metadata.num_delivered
        if delivery >= self.max_deliver and original is not None:
            reason = f"gave up after {delivery} deliveries: {_describe(exc)}"
            return await self._dead_letter(msg, original, DeadLetterKind.EXHAUSTED, reason)
        delay = redelivery_delay(
            delivery, base=self.retry_base_delay, cap=self.retry_max_delay, rng=self._rng
        )
        if isinstance(exc, CircuitOpen):
            # No point knocking before the breaker will let a trial call through.
            delay = max(delay, exc.retry_after)
        if isinstance(exc, MeshError) and exc.retryable:
            log.info("%s: %s (delivery %d); retry in %.2fs", self.agent_id, exc, delivery, delay)
        else:
            log.error(
                "%s: handler failed on %s (delivery %d); retry in %.2fs",
                self.agent_id,
                msg.subject,
                delivery,
                delay,
                exc_info=exc,
            )
        await settle(msg.nak(delay=delay))
        return delay

    async def _dead_letter(
        self, msg: Msg, original: RawMessage, kind: DeadLetterKind, reason: str
    ) -> float | None:
        log.warning("%s: dead-lettering %s: %s", self.agent_id, original.subject, reason)
        try:
            await self.dead_letters.dead_letter(msg, original, kind, reason)
        except MeshError:
            log.exception("%s: dead-letter publish failed; will see it again", self.agent_id)
            await settle(msg.nak(delay=self.retry_base_delay))
            return self.retry_base_delay
        await settle(msg.term())
        return None


class _EnvelopeMismatch(ContractError):
    def __init__(self, subject: str, detail: str) -> None:
        super().__init__(f"subject {subject} does not match the event: {detail}")


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
