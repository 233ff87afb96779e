"""The demo's approver: a person at the claims desk, enrolled like anyone else, who
approves most of the payouts policy sends her and rejects some."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections import Counter
from typing import Any

import msgspec
from nats.aio.client import Client

from contracts import (
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRejected,
    ApprovalRejectedPayload,
)
from contracts.cards import AgentCard
from mesh._broker.publisher import EventPublisher
from mesh._trust.enrolment import issue_grant
from mesh._trust.identity import Identity
from mesh._trust.onboarding import register
from mesh._trust.registry_client import request_with_patience
from mesh.errors import BrokerError, MeshError
from services.stack.stack import Stack

log = logging.getLogger(__name__)

APPROVER = "dana"


async def enrol_approver(stack: Stack) -> tuple[Client, Identity]:
    identity = stack.layout.identity(APPROVER)
    card = AgentCard(
        agent_id=APPROVER,
        name="Dana (claims desk)",
        version="1",
        owner="claims-desk",
        purpose="approves or rejects large payouts",
        kind="human",
        roles=["approver", "claims_manager", "head_of_claims"],
        produces=["approval_granted", "approval_rejected"],
    )
    # A human approver enrols like anyone else: with an operator's grant.
    grant = issue_grant(card, stack.layout.identity("operator"), "operator")
    await register(stack.url, card, identity, stack.topology.subjects, wait=20, grant=grant)
    return await stack.connect(APPROVER), identity


async def approve(stack: Stack, nc: Client, identity: Identity, approvals: Counter[str]) -> None:
    """Decides whatever is pending for the approver, until cancelled; `approvals` counts
    the decisions."""
    topology = stack.topology
    publisher = EventPublisher(nc.jetstream(), identity, topology, nc=nc)
    decided: set[str] = set()
    while True:
        await asyncio.sleep(0.3)
        try:
            reply = await request_with_patience(
                nc,
                topology.subjects.service_as("policy", "pending", APPROVER),
                b"",
                timeout=5,
                what="pending",
            )
        except BrokerError as exc:
            # Lost with the connection to a server that died under it (the client
            # fails over, the request does not): a poll, so simply the next one.
            log.info("pending approvals not read just now: %s", exc)
            continue
        answer = msgspec.json.decode(reply.data)
        if isinstance(answer, dict):
            # The policy service could not list them just now (say, the approvals
            # bucket was between leaders): it says why; ask again on the next poll.
            log.info("pending approvals not listed just now: %s", answer.get("error"))
            continue
        for item in answer:
            request_id = item["request_id"]
            if request_id in decided:
                continue
            decided.add(request_id)
            # Most are approved; one in five is rejected (no receipt attached).
            grant = int(hashlib.sha256(request_id.encode()).hexdigest(), 16) % 5 != 0
            decision = _decision(item, grant)
            await _publish_until_stored(publisher, decision)
            approvals["approved" if grant else "rejected"] += 1


def _decision(item: dict[str, Any], grant: bool) -> ApprovalGranted | ApprovalRejected:
    """The human's answer to one pending request, as the approver states it."""
    envelope: dict[str, Any] = {
        "case_id": item["case_id"],
        "correlation_id": item["correlation_id"],
        "causation_id": item["required_event_id"],
        "actor": APPROVER,
    }
    about = {
        "request_id": item["request_id"],
        "approver": APPROVER,
        "request_digest": item["request_digest"],
    }
    if grant:
        return ApprovalGranted(
            **envelope, payload=ApprovalGrantedPayload(**about, comment="documents ok")
        )
    return ApprovalRejected(
        **envelope, payload=ApprovalRejectedPayload(**about, reason="no receipt")
    )


async def _publish_until_stored(
    publisher: EventPublisher, decision: ApprovalGranted | ApprovalRejected
) -> None:
    """The same event (same id: the stream de-duplicates) again, if its publish failed
    while the cluster failed over — for up to a minute: a rolling restart of every
    member leaves the case stream without a leader more than once."""
    deadline = time.monotonic() + 60.0
    for attempt in itertools.count(1):
        try:
            await publisher.publish(decision)
        except MeshError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("approval not stored yet (%s); again", exc)
            await asyncio.sleep(min(0.5 * attempt, 2.0))
        else:
            return
