"""Turning one delivered message into a settled one.

    decode ─ bad bytes / unknown type / unreadable version ─────────► dead-letter, term
      │
    verify (optional) ─ unsigned or forged ─────────────────────────► dead-letter, term
      │
    handler ─ ok ───────────────────────────────────────────────────► ack
            ├ PermanentError / contract error ──────────────────────► dead-letter, term
            └ anything else (transient, broker, bug) ─ deliveries left ► nak(delay)
                                                   └ none left ────► dead-letter, term

Unknown exceptions count as transient: a bug fixed and redeployed within the retry
window then heals the message instead of losing it, and once retries run out it is
dead-lettered with the error, never dropped. If the dead-letter publish itself fails,
the message is nak'ed (not terminated), so it comes back and nothing is lost.
"""

from __future__ import annotations

import logging
import random
import traceback

import nats.errors
from nats.aio.msg import Msg

from contracts.codec import EventDecoder
from contracts.envelope import Event
from contracts.errors import ContractError
from mesh.agent import Agent, HandlerContext, Services
from mesh.dead_letters import DeadLetterKind, DeadLetterSink
from mesh.errors import MeshError, PermanentError, SignatureError
from mesh.identity import verify_headers
from mesh.resilience import redelivery_delay

log = logging.getLogger(__name__)


class EventDispatcher:
    def __init__(
        self,
        agent: Agent,
        *,
        services: Services,
        dead_letters: DeadLetterSink,
        max_deliver: int,
        retry_base_delay: float,
        retry_max_delay: float,
        verify_signatures: bool = False,
        decoder: EventDecoder | None = None,
    ) -> None:
        self.agent = agent
        self.services = services
        self.dead_letters = dead_letters
        self.max_deliver = max_deliver
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.verify_signatures = verify_signatures
        self.decoder = decoder or EventDecoder()
        self._rng = random.Random()
        self.agent_id = agent.card.agent_id

    async def __call__(self, msg: Msg) -> None:
        try:
            event = self._read(msg)
        except ContractError as exc:
            await self._dead_letter(msg, DeadLetterKind.MALFORMED, str(exc))
            return
        except SignatureError as exc:
            await self._dead_letter(msg, DeadLetterKind.SIGNATURE, str(exc))
            return
        handler = self.agent.handlers.get(event.event_name())
        if handler is None:
            await self._dead_letter(
                msg,
                DeadLetterKind.PERMANENT,
                f"agent {self.agent_id} has no handler for {event.event_name()}",
            )
            return
        meta = msg.metadata
        ctx = HandlerContext(
            agent=self.agent,
            event=event,
            delivery=meta.num_delivered,
            stream_sequence=meta.sequence.stream,
            services=self.services,
        )
        try:
            await handler(event, ctx)
        except (PermanentError, ContractError) as exc:
            await self._dead_letter(msg, DeadLetterKind.PERMANENT, _describe(exc))
            return
        except Exception as exc:
            await self._retry_or_give_up(msg, exc)
            return
        await _settle(msg.ack())

    def _read(self, msg: Msg) -> Event:
        event = self.decoder.decode(msg.data)
        subject_type = msg.subject.rsplit(".", 1)[-1]
        if subject_type != event.event_name():
            raise _SubjectMismatch(msg.subject, event.event_name())
        if self.verify_signatures:
            verify_headers(msg.subject, msg.data, msg.headers)
        return event

    async def _retry_or_give_up(self, msg: Msg, exc: Exception) -> None:
        delivery = msg.metadata.num_delivered
        if delivery >= self.max_deliver:
            reason = f"gave up after {delivery} deliveries: {_describe(exc)}"
            await self._dead_letter(msg, DeadLetterKind.EXHAUSTED, reason)
            return
        delay = redelivery_delay(
            delivery, base=self.retry_base_delay, cap=self.retry_max_delay, rng=self._rng
        )
        if isinstance(exc, MeshError) and exc.retryable:
            log.info("%s: %s (delivery %d); retry in %.2fs", self.agent_id, exc, delivery, delay)
        else:
            log.exception(
                "%s: handler failed on %s (delivery %d)", self.agent_id, msg.subject, delivery
            )
        await _settle(msg.nak(delay=delay))

    async def _dead_letter(self, msg: Msg, kind: DeadLetterKind, reason: str) -> None:
        log.warning("%s: dead-lettering %s: %s", self.agent_id, msg.subject, reason)
        try:
            await self.dead_letters.dead_letter(msg, kind, reason)
        except MeshError:
            log.exception("%s: dead-letter publish failed; will see it again", self.agent_id)
            await _settle(msg.nak(delay=self.retry_base_delay))
            return
        await _settle(msg.term())


class _SubjectMismatch(ContractError):
    def __init__(self, subject: str, event_type: str) -> None:
        super().__init__(f"subject {subject} does not match body event_type {event_type!r}")


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


async def _settle(settlement: object) -> None:
    """Acks are fire-and-forget; if the connection is gone the server redelivers after
    ack_wait, which the handler's idempotent emits make harmless."""
    try:
        await settlement  # type: ignore[misc]
    except nats.errors.Error as exc:
        log.warning("could not settle message: %r (it will be redelivered)", exc)
