"""The ingress service: other systems open cases here.

- NATS: a request to `<root>.svc.ingress.<source>`. Under registry enforcement an
  external system is a principal that may publish on its own source's subject and
  nowhere else, so the source is who the broker says it is. The answer goes only to
  an `_INBOX.` reply subject (`mesh._runtime.replies`): never into the log.
- HTTP: `POST /v1/cases/<source>` with `Authorization: Bearer <token>` (the token is
  configured per source); see `services.ingress.http`.
- The status of a case the source opened: a request to
  `<root>.svc.ingress.status.<source>`, or `GET /v1/cases/<source>/<external_ref>`.
  It is read from the case log with the ingress's own rights (direct gets on the case
  stream, which it needs anyway to recognise a retried opening); see
  `services.ingress.status`.

Valid input becomes a signed `case_opened` (published only if the case is new: the
same source and reference never open two cases, however often the request is
retried). Every input is answered: refused input with the reasons (an error reply, or
HTTP 4xx), and kept in the dead-letter stream with them; only a mesh that cannot take
it now answers "unavailable" (HTTP 503).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import uvicorn
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.envelope import Event
from contracts.events.case import CaseOpened
from contracts.ingress import CaseStatusReply, IngressReply
from mesh.service import (
    ConcurrencyConflict,
    DeadLetterSink,
    EventPublisher,
    Identity,
    KeyDirectory,
    MeshError,
    MeshSettings,
    RawMessage,
    SignatureError,
    TokenBucket,
    Topology,
    read_direct,
    read_subject,
    respond,
    stop_task,
    verify_headers,
)
from services.ingress.body import ReceivedBody
from services.ingress.domain import Limits, Refusal, case_id_for, open_case
from services.ingress.http import http_app
from services.ingress.problems import describe, problem
from services.ingress.settings import IngressSettings
from services.ingress.status import case_status, status_request
from services.ingress.tokens import BearerTokens

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode


class IngressService:
    def __init__(
        self,
        nc: Client,
        identity: Identity,
        settings: MeshSettings,
        ingress: IngressSettings,
        topology: Topology | None = None,
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.ingress = ingress
        self.limits = Limits(max_body_bytes=ingress.max_body_bytes, max_depth=ingress.max_depth)
        self.topology = topology or Topology(settings.subject_root, settings.stream_replicas)
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.publisher = EventPublisher(
            self.js, identity, self.topology, timeout=settings.request_timeout, nc=nc
        )
        self.dead_letters = DeadLetterSink(self.js, self.topology, settings.request_timeout)
        # Everything after this prefix is the source: "a.b" is refused, not read as "b".
        self._source_prefix = self.topology.subjects.service_all("ingress").removesuffix(">")
        # `<root>.svc.ingress.status.<source>`: a source named "status" opens its cases on
        # `<root>.svc.ingress.status`, a subject of one token less.
        self._status_prefix = self.topology.subjects.service("ingress", "status") + "."
        self.tokens = BearerTokens(
            {source: secret.get_secret_value() for source, secret in ingress.http_tokens.items()},
            ingress.http_tokens_file,
        )
        self._subscriptions: list[Subscription] = []
        self._following: asyncio.Task[None] | None = None
        # What a status read trusts: the registry's cards, as every consumer does.
        self.keys = KeyDirectory()
        # Each source may ask so many statuses a second (a status read costs a read of
        # the case's log); the map holds only sources the broker or a token let in.
        self._status_rate: dict[str, TokenBucket] = {}
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.http_port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def reload_tokens(self) -> None:
        """SIGHUP: the HTTP tokens file changed (`mesh principals add|remove`)."""
        await asyncio.to_thread(self.tokens.reload)
        log.info("HTTP tokens reloaded: %d source(s)", len(self.tokens.digests))

    async def start(self) -> None:
        # Cases open without the registry; only status reads wait for its cards.
        self._following = asyncio.create_task(self._follow_registry(), name="follow-registry")
        # Status reads wait in a queue of their own: a flood of status requests never
        # delays a case being opened (the openings' subscription, which sees every
        # subject so that a malformed one is answered too, skips them at once). A status
        # backlog beyond the limit is dropped (the sender's request times out).
        service = self.topology.subjects.service_all("ingress")
        self._subscriptions = [
            await self.nc.subscribe(service, queue="ingress", cb=self._on_request),
            await self.nc.subscribe(
                self._status_prefix + "*",
                queue="ingress-status",
                cb=self._on_status_request,
                pending_msgs_limit=1024,
            ),
        ]
        await self.nc.flush()
        if self.ingress.http_port is not None:
            await self._start_http()

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        await stop_task(self._following, grace=1.0)
        await self.keys.close()

    async def _follow_registry(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.keys.follow(self.nc, self.topology)
            except MeshError as exc:
                log.warning("cannot follow the registry yet (%s); status reads wait", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                return
        if self._http is not None:
            self._http.should_exit = True
            await stop_task(self._http_task, grace=5.0)

    # ------------------------------------------------------------------ the one path

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
            return _failed("unavailable", f"the mesh could not take it now: {exc}")
        except Exception:
            log.exception("the ingress failed on a request from %r", source)
            return _failed("internal", "the ingress failed on this request")

    async def _refuse(
        self, source: str, received: ReceivedBody, received_on: str, refusal: Refusal
    ) -> IngressReply:
        body, headers = received.kept(
            whole_up_to=self.limits.max_body_bytes, prefix=self.ingress.dead_letter_keep_bytes
        )
        kept = await self.dead_letters.refused_input(
            received_on=received_on,
            body=body,
            reason="; ".join(refusal.errors),
            source=source,
            consumer=self.ingress.service_id,
            headers=headers,
        )
        log.info("refused input from %r (dead letter %d): %s", source, kept, refusal.errors)
        return IngressReply(
            ok=False, errors=refusal.errors, problems=refusal.problems, dead_letter=kept
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

    # ------------------------------------------------------------------ status

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
                timeout=self.settings.request_timeout,
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

    # ------------------------------------------------------------------ NATS

    def _trusted(self, message: RawMessage, event: Event) -> bool:
        """Whether `event` holds up as the event store would judge it: signed by its
        actor's key, valid when the log stored it, of a type its card let it write."""
        try:
            signer = verify_headers(message.subject, message.body, message.headers)
            self.keys.check(
                signer, event.actor, message.stored_at, message.subject, event.event_name()
            )
        except SignatureError:
            return False
        return True

    async def _on_status_request(self, msg: Msg) -> None:
        source = msg.subject.removeprefix(self._status_prefix)
        status = await self.status(source, msg.data)
        await respond(msg, _encode(status), what=f"a status request from {source!r}")

    async def _on_request(self, msg: Msg) -> None:
        if msg.subject.startswith(self._status_prefix):
            return  # the status subscription answers it; skipping it here costs nothing
        source = msg.subject.removeprefix(self._source_prefix)
        reply = await self.submit(source, msg.data, msg.subject)
        # A request without an inbox to answer still opened its case, if it could.
        await respond(msg, _encode(reply), what=f"an ingress request from {source!r}")

    # ------------------------------------------------------------------ HTTP

    async def _start_http(self) -> None:
        app = http_app(
            self.submit,
            self.tokens,
            status=lambda source, ref: self.status(source, {"external_ref": ref}),
            max_body_bytes=self.limits.max_body_bytes,
            drain_bytes=self.ingress.http_drain_bytes,
            healthy=lambda: self.nc.is_connected,
        )
        config = uvicorn.Config(
            app,
            host=self.ingress.http_host,
            port=self.ingress.http_port or 0,
            log_level="warning",
            lifespan="off",
        )
        self._http = uvicorn.Server(config)
        self._http_task = asyncio.create_task(self._http.serve(), name="ingress-http")
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # raises why it could not start
            await asyncio.sleep(0.01)
        sockets = [s for server in self._http.servers for s in server.sockets]
        self.http_port = sockets[0].getsockname()[1]
        log.info("ingress HTTP on http://%s:%d", self.ingress.http_host, self.http_port)


def _failed(code: str, message: str) -> IngressReply:
    found = problem("$", code, message)
    return IngressReply(ok=False, errors=[describe(found)], problems=[found])


def _status_failed(code: str, message: str) -> CaseStatusReply:
    found = problem("$", code, message)
    return CaseStatusReply(ok=False, errors=[describe(found)], problems=[found])
