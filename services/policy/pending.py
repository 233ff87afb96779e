"""`<root>.svc.policy.pending.<principal>`: what waits for a human, for the one asking
(the broker lets each principal ask only under its own name). The answer is a JSON list
of `PendingApproval`s, earliest deadline first, or `{"error": …}`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client

from contracts.subjects import Subjects
from mesh.service import KeyDirectory, Request, RequestServer
from services.policy.approvals import PendingApproval, visible_to
from services.policy.store import ApprovalStore

log = logging.getLogger(__name__)

# The answer must fit one message whatever waits: the earliest deadlines first.
PENDING_REPLY_BYTES = 512 * 1024


class PendingApprovals:
    def __init__(self, approvals: ApprovalStore, keys: KeyDirectory) -> None:
        self.approvals = approvals
        self.keys = keys

    async def answer(self, request: Request) -> bytes:
        """An approver sees what its roles may decide, a requester its own requests, an
        operator everything (`approvals.visible_to`)."""
        principal = request.principal
        waiting = await self.approvals.waiting()
        visible = visible_to(principal, self.keys.card_at(principal, datetime.now(UTC)), waiting)
        return _fitting(sorted(visible, key=lambda p: p.deadline), principal)


def pending_server(
    nc: Client, subjects: Subjects, endpoint: PendingApprovals, *, private_replies: bool
) -> RequestServer:
    # One queue group: with several policy replicas, each request is answered once.
    server = RequestServer(
        nc, subjects, "policy", _refusal, private_replies=private_replies, queue="policy"
    )
    server.route("pending", endpoint.answer, as_principal=True, what="pending approvals")
    return server


def _refusal(reason: str) -> bytes:
    return msgspec.json.encode({"error": reason})


def _fitting(pending: list[PendingApproval], principal: str) -> bytes:
    shown = pending
    body = msgspec.json.encode(shown)
    while len(body) > PENDING_REPLY_BYTES and shown:
        shown = shown[: len(shown) // 2]
        body = msgspec.json.encode(shown)
    if len(shown) < len(pending):
        log.warning(
            "pending approvals for %s: %d of %d fit one answer (earliest deadlines first)",
            principal,
            len(shown),
            len(pending),
        )
    return body
