"""The ingress service: other systems open cases here.

- NATS: a request to `<root>.svc.ingress.<source>`. Under registry enforcement an
  external system is a principal that may publish on its own source's subject and
  nowhere else, so the source is who the broker says it is.
- HTTP: `POST /v1/cases/<source>` with `Authorization: Bearer <token>` (the token is
  configured per source).

Valid input becomes a signed `case_opened` (published only if the case is new: the
same source and reference never open two cases, however often the request is
retried). Invalid input is answered with the reasons — an error reply, or HTTP 422 —
and kept in the dead-letter stream with them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import msgspec
import nats.errors
import uvicorn
from fastapi import FastAPI, Request, Response
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.events.case import CaseOpened
from contracts.ingress import IngressReply
from mesh.dead_letters import DeadLetterSink
from mesh.errors import ConcurrencyConflict, MeshError
from mesh.identity import Identity
from mesh.publisher import EventPublisher
from mesh.reading import read_subject
from mesh.settings import MeshSettings
from mesh.tasks import stop_task
from mesh.topology import Topology
from services.ingress.domain import Refusal, open_case
from services.ingress.settings import IngressSettings

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
        self.topology = topology or Topology(settings.subject_root, settings.stream_replicas)
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.publisher = EventPublisher(
            self.js, identity, self.topology, timeout=settings.request_timeout, nc=nc
        )
        self.dead_letters = DeadLetterSink(self.js, self.topology, settings.request_timeout)
        self._subscription: Subscription | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.http_port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(
            self.topology.subjects.service_all("ingress"), queue="ingress", cb=self._on_request
        )
        await self.nc.flush()
        if self.ingress.http_port is not None:
            await self._start_http()

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        if self._http is not None:
            self._http.should_exit = True
            await stop_task(self._http_task, grace=5.0)

    # ------------------------------------------------------------------ the one path

    async def submit(self, source: str, body: bytes, received_on: str) -> IngressReply:
        """Open a case from `body`, or refuse it with reasons (and keep it)."""
        outcome = open_case(source, body, self.ingress.service_id)
        if isinstance(outcome, Refusal):
            kept = await self.dead_letters.refused_input(
                received_on=received_on,
                body=body,
                reason="; ".join(outcome.errors),
                source=source,
                consumer=self.ingress.service_id,
            )
            log.info("refused input from %s (dead letter %d): %s", source, kept, outcome.errors)
            return IngressReply(ok=False, errors=outcome.errors, dead_letter=kept)
        return await self._open(outcome)

    async def _open(self, event: CaseOpened) -> IngressReply:
        assert event.case_id is not None
        try:
            # Only if the case has no event yet: a retried request finds it opened.
            await self.publisher.publish(event, expected_case_sequence=0)
        except ConcurrencyConflict:
            existing = await read_subject(
                self.js,
                self.topology.cases_stream,
                self.topology.subjects.case_event(event.case_id, "case_opened"),
            )
            first = existing[0].event if existing else None
            if not (
                isinstance(first, CaseOpened)
                and first.payload.source == event.payload.source
                and first.payload.external_ref == event.payload.external_ref
            ):
                return IngressReply(
                    ok=False, errors=[f"case {event.case_id} exists and is not this request's"]
                )
            return IngressReply(
                ok=True, case_id=event.case_id, event_id=first.event_id, duplicate=True
            )
        return IngressReply(ok=True, case_id=event.case_id, event_id=event.event_id)

    # ------------------------------------------------------------------ NATS

    async def _on_request(self, msg: Msg) -> None:
        source = msg.subject.rsplit(".", 1)[-1]
        try:
            reply = await self.submit(source, msg.data, msg.subject)
        except MeshError as exc:
            log.warning("could not take a request from %s: %s", source, exc)
            reply = IngressReply(ok=False, errors=[f"the mesh could not take it now: {exc}"])
        if msg.reply:
            try:
                await msg.respond(_encode(reply))
            except nats.errors.Error as exc:
                log.warning("could not answer %s: %r", source, exc)

    # ------------------------------------------------------------------ HTTP

    def http_app(self) -> FastAPI:
        app = FastAPI(title="Agent Mesh ingress", version="1")
        tokens = {
            source: secret.get_secret_value() for source, secret in self.ingress.http_tokens.items()
        }

        @app.post("/v1/cases/{source}", status_code=201)
        async def open_case_http(source: str, request: Request) -> Response:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            expected = tokens.get(source)
            if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
                return _json(401, {"ok": False, "errors": [f"not authorized as {source!r}"]})
            body = await request.body()
            try:
                reply = await self.submit(source, body, f"http:/v1/cases/{source}")
            except MeshError as exc:
                return _json(503, {"ok": False, "errors": [f"the mesh could not take it: {exc}"]})
            status = 422 if not reply.ok else 200 if reply.duplicate else 201
            return _json(status, msgspec.to_builtins(reply))

        @app.get("/healthz")
        async def health() -> dict[str, bool]:
            return {"ok": self.nc.is_connected}

        return app

    async def _start_http(self) -> None:
        config = uvicorn.Config(
            self.http_app(),
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


def _json(status: int, content: Any) -> Response:
    return Response(_encode(content), status_code=status, media_type="application/json")
