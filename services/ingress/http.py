"""The ingress over HTTP: `POST /v1/cases/<source>` with `Authorization: Bearer <token>`
(a token per source, from the settings).

The body is read in chunks: the start of it is held (up to one byte over the limit, to
tell that it is over), the rest only counted and hashed, so a huge body never sits in
memory, and yet it is read to the end (up to a bound) so that the sender can read the
413 instead of a reset connection.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect

from contracts.ingress import IngressReply, Problem
from services.ingress.body import ReceivedBody

Submit = Callable[[str, ReceivedBody, str], Awaitable[IngressReply]]

_encode = msgspec.json.Encoder().encode
# The first code found decides the status; below these, a refusal is 422.
_STATUS_BY_CODE = (
    ("internal", 500),
    ("unavailable", 503),
    ("too_large", 413),
    ("conflict", 409),
    ("not_json", 400),
    ("too_deep", 400),
    ("duplicate_key", 400),
)


def http_app(
    submit: Submit,
    tokens: dict[str, str],
    *,
    max_body_bytes: int,
    drain_bytes: int,
    healthy: Callable[[], bool],
) -> FastAPI:
    app = FastAPI(title="Agent Mesh ingress", version="1")

    @app.post("/v1/cases/{source}", status_code=201)
    async def open_case_http(source: str, request: Request) -> Response:
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        expected = tokens.get(source)
        if (
            expected is None
            or scheme.lower() != "bearer"  # the scheme is case-insensitive (RFC 9110)
            or not hmac.compare_digest(given.strip().encode(), expected.encode())
        ):
            # Not kept: what a stranger sends is not another system's input.
            found = Problem(path="$", code="unauthorized", message=f"not authorized as {source!r}")
            return _json(401, IngressReply(ok=False, errors=[found.message], problems=[found]))
        try:
            body = await read_body(request, hold=max_body_bytes + 1, drain=drain_bytes)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read an answer
        reply = await submit(source, body, f"http:/v1/cases/{source}")
        return _json(status_of(reply), reply)

    @app.get("/healthz")
    async def health() -> dict[str, bool]:
        return {"ok": healthy()}

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
    codes = {found.code for found in reply.problems}
    return next((status for code, status in _STATUS_BY_CODE if code in codes), 422)


def _json(status: int, content: Any) -> Response:
    return Response(_encode(content), status_code=status, media_type="application/json")
