"""Answering a source's status request: where a case it opened stands, read from the
case log with the ingress's own rights (direct gets on the case stream), each event
judged as the event store would judge it, at so many requests a second per source.
The answer itself is folded by `services.ingress.status` (pure).
"""

from __future__ import annotations

import logging

from nats.aio.client import Client

from contracts.envelope import Event
from contracts.ingress import CaseStatusReply
from mesh.service import (
    KeyDirectory,
    MeshError,
    RawMessage,
    SignatureError,
    TokenBucket,
    Topology,
    read_direct,
    verify_headers,
)
from services.ingress.domain import Limits, Refusal, case_id_for
from services.ingress.problems import describe, problem
from services.ingress.settings import IngressSettings
from services.ingress.status import case_status, status_request

log = logging.getLogger(__name__)


class StatusReads:
    def __init__(
        self,
        nc: Client,
        topology: Topology,
        keys: KeyDirectory,
        ingress: IngressSettings,
        limits: Limits,
        *,
        timeout: float,
    ) -> None:
        self.nc = nc
        self.topology = topology
        # What a status read trusts: the registry's cards, as every consumer does.
        self.keys = keys
        self.ingress = ingress
        self.limits = limits
        self.timeout = timeout
        # Each source may ask so many statuses a second (a status read costs a read of
        # the case's log); the map holds only sources the broker or a token let in.
        self._status_rate: dict[str, TokenBucket] = {}

    async def status(self, source: str, asked: bytes | dict[str, str]) -> CaseStatusReply:
        """Where a case `source` opened stands (`asked`: the JSON body of a request, or
        an HTTP request's members). Always answers; a refused request is not kept, since
        it asked for nothing to change."""
        try:
            request = status_request(source, asked, self.limits)
            if isinstance(request, Refusal):
                return CaseStatusReply(ok=False, errors=request.errors, problems=request.problems)
            bucket = self._status_rate.setdefault(
                source,
                TokenBucket(
                    rate=self.ingress.status_requests_per_second,
                    burst=2 * self.ingress.status_requests_per_second,
                ),
            )
            if (wait := bucket.take()) > 0:
                return _status_failed(
                    "rate_limited", f"too many status requests: retry in {wait:.2f}s"
                )
            case_id = case_id_for(source, request.external_ref)
            messages = await read_direct(
                self.nc,
                self.topology.cases_stream,
                self.topology.subjects.case_history(case_id),
                timeout=self.timeout,
            )
            if messages:
                if not self.keys.loaded.is_set():
                    return _status_failed(
                        "unavailable", "the registry's cards are not loaded yet: retry later"
                    )
                # Judge no event by a directory older than it (a revocation just before).
                await self.keys.ensure_current(messages[-1].stored_at)
            return case_status(
                source, request.external_ref, messages, self.ingress.service_id, self._trusted
            )
        except MeshError as exc:
            log.warning("could not read a case's status for %r: %s", source, exc)
            return _status_failed("unavailable", f"the mesh could not answer now: {exc}")
        except Exception:
            log.exception("the ingress failed on a status request from %r", source)
            return _status_failed("internal", "the ingress failed on this request")

    def _trusted(self, message: RawMessage, event: Event) -> bool:
        return holds_up(self.keys, message, event)


def holds_up(keys: KeyDirectory, message: RawMessage, event: Event) -> bool:
    """Whether `event` holds up as the event store would judge it: signed by its actor's
    key, valid when the log stored it, of a type its card let it write."""
    try:
        signer = verify_headers(message.subject, message.body, message.headers)
        keys.check(signer, event.actor, message.stored_at, message.subject, event.event_name())
    except SignatureError:
        return False
    return True


def _status_failed(code: str, message: str) -> CaseStatusReply:
    found = problem("$", code, message)
    return CaseStatusReply(ok=False, errors=[describe(found)], problems=[found])
