"""The ingress service: other systems open cases here.

- NATS: a request to `<root>.svc.ingress.<source>`. Under registry enforcement an
  external system is a principal that may publish on its own source's subject and
  nowhere else, so the source is who the broker says it is. The answer goes only to
  an `_INBOX.` reply subject (`mesh._runtime.replies`): never into the log.
- HTTP: `POST /v1/cases/<source>` with `Authorization: Bearer <token>` (the token is
  configured per source); see `services.ingress.http`.
- Adding evidence or a business event to an open case the sender is party to: a
  request to `<root>.svc.ingress.events.<source>`, or `POST
  /v1/cases/<case_source>/<external_ref>/events`; see `services.ingress.continuing`.
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

This module is the service's lifecycle and its intake (NATS subscriptions, the HTTP
server); opening a case is `services.ingress.openings`, answering a status request
`services.ingress.status_reads`.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import uvicorn
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mesh.service import (
    DeadLetterSink,
    EventPublisher,
    Identity,
    KeyDirectory,
    MeshError,
    MeshSettings,
    Topology,
    respond,
    stop_task,
)
from services.ingress.continuing import CaseContinuations
from services.ingress.domain import Limits
from services.ingress.http import http_app
from services.ingress.openings import CaseOpenings
from services.ingress.settings import IngressSettings
from services.ingress.status_reads import StatusReads
from services.ingress.tokens import BearerTokens

log = logging.getLogger(__name__)
# Events from outside systems handled at once (each source is rate limited besides).
EVENTS_IN_FLIGHT = 256
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
        self._events_prefix = self.topology.subjects.service("ingress", "events") + "."
        self.tokens = BearerTokens(
            {source: secret.get_secret_value() for source, secret in ingress.http_tokens.items()},
            ingress.http_tokens_file,
        )
        self._subscriptions: list[Subscription] = []
        self._events_in_flight = asyncio.Semaphore(EVENTS_IN_FLIGHT)
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._following: asyncio.Task[None] | None = None
        self.keys = KeyDirectory()
        self.openings = CaseOpenings(
            self.js, self.topology, self.publisher, self.dead_letters, ingress, self.limits
        )
        self.continuations = CaseContinuations(
            nc,
            self.topology,
            self.publisher,
            self.dead_letters,
            self.keys,
            ingress,
            self.limits,
            id_key=identity.id_key,
            timeout=settings.request_timeout,
        )
        self.statuses = StatusReads(
            nc, self.topology, self.keys, ingress, self.limits, timeout=settings.request_timeout
        )
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
            await self.nc.subscribe(
                self._events_prefix + "*", queue="ingress-events", cb=self._on_event_request
            ),
        ]
        await self.nc.flush()
        if self.ingress.http_port is not None:
            await self._start_http()

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        if self._event_tasks:  # answer what was taken before stopping
            await asyncio.wait(list(self._event_tasks), timeout=5.0)
        await stop_task(self._following, grace=1.0)
        await self.keys.close()
        if self._http is not None:
            self._http.should_exit = True
            await stop_task(self._http_task, grace=5.0)

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

    # ------------------------------------------------------------------ NATS

    async def _on_status_request(self, msg: Msg) -> None:
        source = msg.subject.removeprefix(self._status_prefix)
        status = await self.statuses.status(source, msg.data)
        await respond(msg, _encode(status), what=f"a status request from {source!r}")

    async def _on_event_request(self, msg: Msg) -> None:
        # Each request in a task of its own (at most EVENTS_IN_FLIGHT at once): a "not
        # found" answered only after its floor time, or a slow read, holds no one else's.
        await self._events_in_flight.acquire()
        task = asyncio.create_task(self._answer_event(msg))
        self._event_tasks.add(task)
        task.add_done_callback(self._event_done)

    def _event_done(self, task: asyncio.Task[None]) -> None:
        self._event_tasks.discard(task)
        self._events_in_flight.release()

    async def _answer_event(self, msg: Msg) -> None:
        source = msg.subject.removeprefix(self._events_prefix)
        reply = await self.continuations.submit(source, msg.data, msg.subject)
        await respond(msg, _encode(reply), what=f"an event from {source!r}")

    async def _on_request(self, msg: Msg) -> None:
        if msg.subject.startswith((self._status_prefix, self._events_prefix)):
            return  # their own subscriptions answer them; skipping costs nothing
        source = msg.subject.removeprefix(self._source_prefix)
        reply = await self.openings.submit(source, msg.data, msg.subject)
        # A request without an inbox to answer still opened its case, if it could.
        await respond(msg, _encode(reply), what=f"an ingress request from {source!r}")

    # ------------------------------------------------------------------ HTTP

    async def _start_http(self) -> None:
        app = http_app(
            self.openings.submit,
            self.tokens,
            status=lambda source, ref: self.statuses.status(source, {"external_ref": ref}),
            add_event=self.continuations.submit,
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
