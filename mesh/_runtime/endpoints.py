"""The one request/reply server every mesh service answers with.

A service declares its operations; the server subscribes to
`<root>.svc.<service>.<operation>` (or `….<operation>.<principal>` for operations a
principal asks under its own name, which the broker lets each principal publish only
as itself), hands each request to its handler and answers only on the requester's
inbox (mesh/_runtime/replies.py). Every request gets a definite answer:

    handler returns bytes             → sent as they are
    Refused(reason)                   → the service's negative reply, with the reason
    ContractError / msgspec errors /  → "malformed <operation> request: …"
      RecursionError (too deep)
    MeshError (broker, store, …)      → "<service> could not <operation> now: …", logged
    any other exception (a bug)       → "<service> could not <operation>: …", logged with
                                        its traceback: the asker never waits for nothing
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.errors import ContractError, InvalidSubject
from contracts.subjects import Subjects
from mesh._runtime.replies import respond
from mesh.errors import MeshError, Refused

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One request as the handler sees it: the operation, who asks (for operations
    asked under one's own name; the broker vouches for it) and the raw message."""

    operation: str
    principal: str
    msg: Msg

    @property
    def body(self) -> bytes:
        return self.msg.data


Handler = Callable[[Request], Awaitable[bytes | None]]


@dataclass(frozen=True)
class _Route:
    handler: Handler
    as_principal: bool
    what: str  # how logs name the operation ("" → "<service> <operation>")


class RequestServer:
    """Serves one service's operations. `refusal(reason)` encodes the service's
    negative reply (each service keeps its reply type; the skeleton is shared)."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        service: str,
        refusal: Callable[[str], bytes],
        *,
        queue: str = "",
        pending_msgs_limit: int = 65536,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.service = service
        self.refusal = refusal
        self.queue = queue
        self.pending_msgs_limit = pending_msgs_limit
        self._routes: dict[str, _Route] = {}
        self._subscriptions: list[Subscription] = []

    def route(
        self, operation: str, handler: Handler, *, as_principal: bool = False, what: str = ""
    ) -> None:
        """Answer `operation` with `handler`. With `as_principal`, the subject names the
        asker (`….<operation>.<principal>`) and the request carries that name. `what`
        names the operation in logs (default "<service> <operation>")."""
        self._routes[operation] = _Route(handler, as_principal, what)

    @property
    def operations(self) -> list[str]:
        return sorted(self._routes)

    async def start(self) -> None:
        for operation, route in self._routes.items():
            subject = self.subjects.service(self.service, operation)
            if route.as_principal:
                subject += ".*"
            self._subscriptions.append(
                await self.nc.subscribe(
                    subject,
                    queue=self.queue,
                    cb=self._callback(operation, route),
                    pending_msgs_limit=self.pending_msgs_limit,
                )
            )
        await self.nc.flush()  # live on the server before the service says it is up

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()

    def _callback(self, operation: str, route: _Route) -> Callable[[Msg], Awaitable[None]]:
        async def callback(msg: Msg) -> None:
            asker = ""
            if route.as_principal:
                try:
                    asker = self.subjects.parse_service(msg.subject).principal or ""
                except InvalidSubject as exc:
                    await respond(msg, self.refusal(str(exc)), what=f"{self.service} {operation}")
                    return
            await self.answer(Request(operation, asker, msg), route)

        return callback

    async def answer(self, request: Request, route: _Route) -> None:
        """Run the handler (a request without a reply subject, a heartbeat say, is still
        handled) and answer if the requester's reply subject is an inbox."""
        what = self._what(request, route)
        reply = await self._reply(request, route.handler, what)
        if reply is not None:
            await respond(request.msg, reply, what=what)

    async def _reply(self, request: Request, handler: Handler, what: str) -> bytes | None:
        operation = request.operation
        try:
            return await handler(request)
        except Refused as exc:
            return self.refusal(exc.reason)
        except (ContractError, msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
            return self.refusal(f"malformed {operation} request: {exc}")
        except MeshError as exc:
            log.warning("%s failed: %s", what, exc)
            return self.refusal(f"{self.service} could not {operation} now: {exc}")
        except Exception as exc:
            # A bug must not leave the asker waiting for an answer that never comes.
            log.exception("%s failed unexpectedly", what)
            return self.refusal(f"{self.service} could not {operation}: {exc!r}")

    def _what(self, request: Request, route: _Route) -> str:
        if route.what:
            return route.what
        asker = f" for {request.principal}" if request.principal else ""
        return f"{self.service} {request.operation}{asker}"


__all__ = ["Handler", "Request", "RequestServer"]
