"""Opening a case: the one path every request takes, from NATS or HTTP. Valid input
becomes a signed `case_opened`, published only if the case is new (the same source and
reference never open two cases, however often the request is retried); refused input
is answered with the reasons and kept in the dead-letter stream with them; a mesh that
cannot take it now is "unavailable".
"""

from __future__ import annotations

import logging

from nats.js.client import JetStreamContext

from contracts.events.case import CaseOpened
from contracts.ingress import IngressReply
from mesh.service import (
    ConcurrencyConflict,
    DeadLetterSink,
    EventPublisher,
    MeshError,
    Topology,
    read_subject,
)
from services.ingress.body import ReceivedBody
from services.ingress.domain import Limits, Refusal, open_case
from services.ingress.problems import problem
from services.ingress.refusals import failed, keep_refused
from services.ingress.settings import IngressSettings

log = logging.getLogger(__name__)


class CaseOpenings:
    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        publisher: EventPublisher,
        dead_letters: DeadLetterSink,
        ingress: IngressSettings,
        limits: Limits,
    ) -> None:
        self.js = js
        self.topology = topology
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.ingress = ingress
        self.limits = limits

    async def submit(
        self, source: str, body: bytes | ReceivedBody, received_on: str
    ) -> IngressReply:
        """Open a case from `body`, or refuse it with reasons (and keep it). Always
        answers: a mesh that cannot take it now is "unavailable", a bug "internal"."""
        received = body if isinstance(body, ReceivedBody) else ReceivedBody.of(body)
        try:
            outcome = open_case(
                source,
                received.head,
                self.ingress.service_id,
                limits=self.limits,
                size=received.size,
            )
            if isinstance(outcome, Refusal):
                return await self._refuse(source, received, received_on, outcome)
            return await self._open(outcome, source, received, received_on)
        except MeshError as exc:
            log.warning("could not take a request from %r: %s", source, exc)
            return failed("unavailable", f"the mesh could not take it now: {exc}")
        except Exception:
            log.exception("the ingress failed on a request from %r", source)
            return failed("internal", "the ingress failed on this request")

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

    async def _open(
        self, event: CaseOpened, source: str, received: ReceivedBody, received_on: str
    ) -> IngressReply:
        assert event.case_id is not None
        opening = self.topology.subjects.case_event(event.case_id, "case_opened")
        try:
            # Only if the case was never opened: a retried request finds it opened. The
            # condition is on its opening alone, so nobody can squat a case id by
            # writing something else into it first (the verifier names such events).
            await self.publisher.publish(event, expected_sequence=0, expected_scope=opening)
        except ConcurrencyConflict:
            existing = await read_subject(self.js, self.topology.cases_stream, opening)
            first = existing[0].event if existing else None
            if not (
                isinstance(first, CaseOpened)
                and first.payload.source == event.payload.source
                and first.payload.external_ref == event.payload.external_ref
            ):
                message = f"case {event.case_id} exists and is not this request's"
                conflict = Refusal([problem("$.external_ref", "conflict", message)])
                return await self._refuse(source, received, received_on, conflict)
            return IngressReply(
                ok=True, case_id=event.case_id, event_id=first.event_id, duplicate=True
            )
        return IngressReply(ok=True, case_id=event.case_id, event_id=event.event_id)
