"""The ingress over HTTP: `POST /v1/cases/<source>` with `Authorization: Bearer <token>`
(a token per source, from the settings) opens a case; `GET /v1/cases/<source>/<ref>`
with the same token says where the source's case with that reference stands; `POST
/v1/cases/<source>/<ref>/events` adds an event to that case, sent by whichever system
the token is (the opener, or a party it named).

The body is read in chunks: the start of it is held (up to one byte over the limit, to
tell that it is over), the rest only counted and hashed, so a huge body never sits in
memory, and yet it is read to the end (up to a bound) so that the sender can read the
413 instead of a reset connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect

from contracts.ingress import CaseStatusReply, IngressReply, Problem
from services.ingress.body import ReceivedBody
from services.ingress.tokens import BearerTokens

Submit = Callable[[str, ReceivedBody, str], Awaitable[IngressReply]]
Status = Callable[[str, str], Awaitable[CaseStatusReply]]  # (source, external_ref)
# (sender, body, received_on, (case_source, external_ref))
AddEvent = Callable[[str, ReceivedBody, str, tuple[str, str]], Awaitable[IngressReply]]

_encode = msgspec.json.Encoder().encode
# The first code found decides the status; below these, a refusal is 422.
_STATUS_BY_CODE = (
    ("internal", 500),
    ("unavailable", 503),
    ("too_large", 413),
    ("conflict", 409),
    ("case_closed", 409),
    ("not_json", 400),
    ("too_deep", 400),
    ("duplicate_key", 400),
    ("not_found", 404),
    ("rate_limited", 429),
)


def http_app(
    submit: Submit,
    tokens: BearerTokens,
    *,
    status: Status | None = None,
    add_event: AddEvent | None = None,
    max_body_bytes: int,
    drain_bytes: int,
    healthy: Callable[[], bool],
) -> FastAPI:
    app = FastAPI(title="Agent Mesh ingress", version="1")

    def refused(source: str, request: Request) -> Problem | None:
        """Why the request may not act as `source`, if it may not."""
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        # The scheme is case-insensitive (RFC 9110).
        if scheme.lower() != "bearer" or not tokens.allows(source, given.strip()):
            return Problem(path="$", code="unauthorized", message=f"not authorized as {source!r}")
        return None

    @app.post("/v1/cases/{source}", status_code=201)
    async def open_case_http(source: str, request: Request) -> Response:
        if (found := refused(source, request)) is not None:
            # Not kept: what a stranger sends is not another system's input.
            return _json(401, IngressReply(ok=False, errors=[found.message], problems=[found]))
        try:
            body = await read_body(request, hold=max_body_bytes + 1, drain=drain_bytes)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read an answer
        reply = await submit(source, body, f"http:/v1/cases/{source}")
        return _json(status_of(reply), reply)

    if status is not None:
        answer_status = status

        @app.get("/v1/cases/{source}/{external_ref}")
        async def case_status_http(source: str, external_ref: str, request: Request) -> Response:
            if (found := refused(source, request)) is not None:
                reply = CaseStatusReply(ok=False, errors=[found.message], problems=[found])
                return _json(401, reply)
            reply = await answer_status(source, external_ref)
            return _json(200 if reply.ok else _refusal_status(reply.problems), reply)

    if add_event is not None:
        add = add_event

        @app.post("/v1/cases/{source}/{external_ref}/events", status_code=201)
        async def add_event_http(source: str, external_ref: str, request: Request) -> Response:
            scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
            sender = tokens.source_of(given.strip()) if scheme.lower() == "bearer" else None
            if sender is None:
                found = Problem(path="$", code="unauthorized", message="not an authorized source")
                return _json(401, IngressReply(ok=False, errors=[found.message], problems=[found]))
            try:
                body = await read_body(request, hold=max_body_bytes + 1, drain=drain_bytes)
            except ClientDisconnect:
                return Response(status_code=400)
            where = f"http:/v1/cases/{source}/{external_ref}/events"
            reply = await add(sender, body, where, (source, external_ref))
            return _json(status_of(reply), reply)

    @app.get("/healthz")
    async def health(response: Response) -> dict[str, bool]:
        ok = healthy()
        if not ok:
            # A probe reads the status code, not the body: not connected to NATS, the
            # ingress can open no case, so it is taken out of rotation.
            response.status_code = 503
        return {"ok": ok}

    return app


async def read_body(request: Request, *, hold: int, drain: int) -> ReceivedBody:
    """Read the body in chunks, holding its first `hold` bytes and counting and hashing
    all; stop after `drain` bytes (at least `hold`): a sender of more is cut off."""
    head = bytearray()
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
        if len(head) < hold:
            head += chunk[: hold - len(head)]
        if size > max(drain, hold):
            return ReceivedBody(bytes(head), size, digest.hexdigest(), complete=False)
    return ReceivedBody(bytes(head), size, digest.hexdigest())


def status_of(reply: IngressReply) -> int:
    if reply.ok:
        return 200 if reply.duplicate else 201
    return _refusal_status(reply.problems)


def _refusal_status(problems: list[Problem]) -> int:
    codes = {found.code for found in problems}
    return next((status for code, status in _STATUS_BY_CODE if code in codes), 422)


def _json(status: int, content: Any) -> Response:
    return Response(_encode(content), status_code=status, media_type="application/json")
