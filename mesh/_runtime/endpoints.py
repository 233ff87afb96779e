"""The one request/reply server every mesh service answers with.

A service declares its operations; the server subscribes to
`<root>.svc.<service>.<operation>` (or `….<operation>.<principal>` for operations a
principal asks under its own name, which the broker lets each principal publish only
as itself), hands each request to its handler and answers only on the requester's
inbox (mesh/_runtime/replies.py). Every request gets a definite answer:

    handler returns bytes             → sent as they are
    Refused(reason)                   → the service's negative reply, with the reason
    SignatureError                    → "not signed as required: …"
    ContractError / msgspec errors /  → "malformed <operation> request: …"
      RecursionError (too deep)
    MeshError (broker, store, …)      → "<service> could not <operation> now: …", logged
    any other exception (a bug)       → "<service> could not <operation>: …", logged with
                                        its traceback: the asker never waits for nothing
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.errors import ContractError, InvalidSubject
from contracts.subjects import Subjects
from mesh._runtime.replies import is_inbox, respond
from mesh._trust.onboarding import inbox_prefix
from mesh.errors import MeshError, Refused, SignatureError

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
    also_named: bool = False  # served unnamed and, for those who must say who they are, named


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
        private_replies: bool = False,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.service = service
        self.refusal = refusal
        self.queue = queue
        self.pending_msgs_limit = pending_msgs_limit
        # Under the registry's enforcement each principal reads only its own inbox
        # (`_INBOX.<principal>.…`): a named request is answered there and nowhere else,
        # or an asker could have another principal's answer delivered to a third.
        self.private_replies = private_replies
        self._routes: dict[str, _Route] = {}
        self._subscriptions: list[Subscription] = []

    def route(
        self,
        operation: str,
        handler: Handler,
        *,
        as_principal: bool = False,
        also_named: bool = False,
        what: str = "",
    ) -> None:
        """Answer `operation` with `handler`. With `as_principal`, the subject names the
        asker (`….<operation>.<principal>`) and the request carries that name; with
        `also_named`, both forms are served (the broker lets some principals ask only
        under their own name, others only unnamed). `what` names the operation in logs
        (default "<service> <operation>")."""
        self._routes[operation] = _Route(handler, as_principal, what, also_named)

    @property
    def operations(self) -> list[str]:
        return sorted(self._routes)

    async def start(self) -> None:
        for operation, route in self._routes.items():
            served = [route]
            if route.also_named:
                served = [
                    dataclasses.replace(route, as_principal=False),
                    dataclasses.replace(route, as_principal=True),
                ]
            for form in served:
                subject = self.subjects.service(self.service, operation)
                if form.as_principal:
                    subject += ".*"
                self._subscriptions.append(
                    await self.nc.subscribe(
                        subject,
                        queue=self.queue,
                        cb=self._callback(operation, form),
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
                    await respond(msg, self.refusal(_brief(str(exc))), what=operation)
                    return
            await self.answer(Request(operation, asker, msg), route)

        return callback

    async def answer(self, request: Request, route: _Route) -> None:
        """Run the handler (a request without a reply subject, a heartbeat say, is still
        handled) and answer if the requester's reply subject is an inbox."""
        what = self._what(request, route)
        own = f"{inbox_prefix(request.principal)}."
        if self.private_replies and request.principal and not request.msg.reply.startswith(own):
            log.warning(
                "not answering %s on %r: a named request is answered only on the asker's "
                "own inbox (%s…)",
                what,
                request.msg.reply,
                own,
            )
            return
        reply = await self._reply(request, route.handler, what)
        if reply is None or await respond(request.msg, reply, what=what):
            return
        if is_inbox(request.msg.reply):
            # The answer could not be sent (larger than the broker takes, say): the asker
            # still gets a definite one instead of waiting for nothing.
            short = self.refusal(f"{self.service} could not send its answer to {request.operation}")
            await respond(request.msg, short, what=what)

    async def _reply(self, request: Request, handler: Handler, what: str) -> bytes | None:
        operation = request.operation
        try:
            return await handler(request)
        except Refused as exc:
            return self.refusal(_brief(exc.reason))
        except SignatureError as exc:
            return self.refusal(_brief(f"not signed as required: {exc.reason}"))
        except (ContractError, msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
            return self.refusal(_brief(f"malformed {operation} request: {exc}"))
        except MeshError as exc:
            log.warning("%s failed: %s", what, exc)
            return self.refusal(_brief(f"{self.service} could not {operation} now: {exc}"))
        except Exception as exc:
            # A bug must not leave the asker waiting for an answer that never comes.
            log.exception("%s failed unexpectedly", what)
            return self.refusal(_brief(f"{self.service} could not {operation}: {exc!r}"))

    def _what(self, request: Request, route: _Route) -> str:
        if route.what:
            return route.what
        asker = f" for {request.principal}" if request.principal else ""
        return f"{self.service} {request.operation}{asker}"


# A reason often quotes the request (an id, a subject): a hostile request must not make
# its refusal too large to send, or its asker would wait for an answer that never comes.
REASON_CHARACTERS = 1000


def _brief(reason: str) -> str:
    if len(reason) <= REASON_CHARACTERS:
        return reason
    return f"{reason[:REASON_CHARACTERS]}… ({len(reason)} characters in all)"


__all__ = ["Handler", "Request", "RequestServer"]
