"""Adding to an open case: the one path every such request takes, from NATS or HTTP.
What a system may add, and when, is `services.ingress.continuations` (pure); here the
case's log is read (direct gets, with the ingress's own rights, each message judged
against the registry's cards as every consumer judges it), the event written, refused
input kept in the dead-letter stream with its reasons, and every request answered.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client

from contracts.envelope import Event
from contracts.events.case import EvidenceReceived
from contracts.ingress import IngressReply
from mesh.service import (
    DeadLetterSink,
    EventPublisher,
    KeyDirectory,
    MeshError,
    RawMessage,
    TokenBucket,
    Topology,
    read_direct,
)
from services.ingress.body import ReceivedBody
from services.ingress.continuations import (
    AlreadyAdded,
    conflict,
    continue_case,
    event_request,
    is_party,
    not_a_party,
    same_content,
)
from services.ingress.domain import Limits, Refusal, case_id_for, source_problem
from services.ingress.refusals import failed, keep_refused
from services.ingress.settings import IngressSettings
from services.ingress.status import event_of
from services.ingress.status_reads import holds_up

log = logging.getLogger(__name__)

# A "not found" is answered this long after the request arrived, whether the case does
# not exist (nothing to read) or is another's (its log read and checked): how long the
# answer took must not tell which.
NOT_FOUND_SECONDS = 0.05


class CaseContinuations:
    def __init__(
        self,
        nc: Client,
        topology: Topology,
        publisher: EventPublisher,
        dead_letters: DeadLetterSink,
        keys: KeyDirectory,
        ingress: IngressSettings,
        limits: Limits,
        *,
        id_key: bytes,
        timeout: float,
    ) -> None:
        self.nc = nc
        self.topology = topology
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.keys = keys
        self.ingress = ingress
        self.limits = limits
        self.id_key = id_key
        self.timeout = timeout
        self._rate: dict[str, TokenBucket] = {}

    async def submit(
        self,
        source: str,
        body: bytes | ReceivedBody,
        received_on: str,
        case: tuple[str, str] | None = None,
    ) -> IngressReply:
        """Add what `source` sent to the case it names (`case`: the case_source and
        external_ref of an HTTP URL), or refuse it with reasons and keep it. Always
        answers: a mesh that cannot take it now is "unavailable", a bug "internal"."""
        received = body if isinstance(body, ReceivedBody) else ReceivedBody.of(body)
        started = time.monotonic()
        try:
            # Before anything is read, parsed or kept: a source over its rate is answered
            # at once and its request is not kept (it was not taken; send it again), so
            # a flood costs the ingress next to nothing and delays no other source.
            if source_problem(source) is None and (wait := self._bucket(source).take()) > 0:
                return failed("rate_limited", f"too many events: retry in {wait:.2f}s")
            request = event_request(
                source, received.head, self.limits, size=received.size, case=case
            )
            if isinstance(request, Refusal):
                return await self._refuse(source, received, received_on, request)
            case_id = case_id_for(request.case_source, request.external_ref)
            # Whose case it is, from its opening alone: a case the sender is no party to
            # is refused before its log is read, as fast as one that does not exist.
            opening = await self._read(self.topology.subjects.case_event(case_id, "case_opened"))
            if not is_party(source, request, opening, self.ingress.service_id, self._trusted):
                await _not_sooner_than(started + NOT_FOUND_SECONDS)
                return await self._refuse(source, received, received_on, not_a_party(request))
            messages = await self._read(self.topology.subjects.case_history(case_id))
            outcome = continue_case(
                source,
                request,
                messages,
                opener=self.ingress.service_id,
                trusted=self._trusted,
                id_key=self.id_key,
            )
            if isinstance(outcome, Refusal):
                return await self._refuse(source, received, received_on, outcome)
            if isinstance(outcome, AlreadyAdded):
                return IngressReply(
                    ok=True, case_id=outcome.case_id, event_id=outcome.event_id, duplicate=True
                )
            receipt = await self.publisher.publish(outcome)
            if receipt.duplicate and not await self._stored_as_sent(outcome):
                # Another copy under the same id, with other content, won the race.
                return await self._refuse(source, received, received_on, conflict(request))
            return IngressReply(
                ok=True, case_id=case_id, event_id=outcome.event_id, duplicate=receipt.duplicate
            )
        except MeshError as exc:
            log.warning("could not add an event from %r: %s", source, exc)
            return failed("unavailable", f"the mesh could not take it now: {exc}")
        except Exception:
            log.exception("the ingress failed on an event from %r", source)
            return failed("internal", "the ingress failed on this request")

    def _bucket(self, source: str) -> TokenBucket:
        rate = self.ingress.events_per_second
        return self._rate.setdefault(source, TokenBucket(rate=rate, burst=2 * rate))

    async def _read(self, subject: str) -> list[RawMessage]:
        messages = await read_direct(
            self.nc, self.topology.cases_stream, subject, timeout=self.timeout
        )
        if messages:
            if not self.keys.loaded.is_set():
                raise _NotReady("the registry's cards are not loaded yet: retry later")
            # Judge no event by a directory older than it (a revocation just before).
            await self.keys.ensure_current(messages[-1].stored_at)
        return messages

    async def _stored_as_sent(self, sent: EvidenceReceived) -> bool:
        assert sent.case_id is not None
        for message in await self._read(self.topology.subjects.case_history(sent.case_id)):
            stored = event_of(message, sent.case_id)
            if stored is not None and stored.event_id == sent.event_id:
                return isinstance(stored, EvidenceReceived) and same_content(sent, stored)
        return False

    def _trusted(self, message: RawMessage, event: Event) -> bool:
        return holds_up(self.keys, message, event)

    async def _refuse(
        self, source: str, received: ReceivedBody, received_on: str, refusal: Refusal
    ) -> IngressReply:
        return await keep_refused(
            self.dead_letters,
            self.ingress,
            self.limits,
            source=source,
            received=received,
            received_on=received_on,
            refusal=refusal,
        )


async def _not_sooner_than(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


class _NotReady(MeshError):
    retryable = True
