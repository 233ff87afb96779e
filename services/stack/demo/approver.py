"""The demo's approver: a person at the claims desk, enrolled like anyone else, who
approves most of the payouts policy sends her and rejects some — and her assistant,
an agent she delegates part of her authority to: it approves the smaller payouts
(claims_manager's, up to DELEGATED_UP_TO) for her, under a delegation she signed, and
every such decision says whom it acted for. (For the demo, one loop reads what waits
for her and hands the assistant its share; it signs with its own key.)"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.aio.client import Client

from contracts import (
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRejected,
    ApprovalRejectedPayload,
)
from contracts.cards import ActionGrant, AgentCard
from contracts.delegation import Delegation
from contracts.ingress import CLAIM_KIND
from mesh._broker.publisher import EventPublisher
from mesh._trust.enrolment import issue_grant
from mesh._trust.identity import Identity
from mesh._trust.onboarding import register
from mesh._trust.registry_client import RegistryClient, request_with_patience
from mesh.errors import BrokerError, MeshError
from services.stack.stack import Stack

log = logging.getLogger(__name__)

APPROVER = "dana"
ASSISTANT = "approval-assistant"
DELEGATED_UP_TO = 250_000  # cents: what the assistant may approve for dana
DANA_LIMIT = 5_000_000  # dana's own limit, on her card


@dataclass(frozen=True)
class Desk:
    """Who decides at the claims desk: dana, and the assistant under her delegation."""

    nc: Client
    identity: Identity
    assistant_nc: Client
    assistant: Identity
    delegation_id: str


async def enrol_approver(stack: Stack) -> Desk:
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
        actions=[ActionGrant(action_type="issue_payment", limits={"max_amount": DANA_LIMIT})],
    )
    assistant_card = AgentCard(
        agent_id=ASSISTANT,
        name="Dana's approval assistant",
        version="1",
        owner="claims-desk",
        purpose="approves small payouts for the claims manager who delegates it",
        kind="agent",
        roles=["delegate"],
        produces=["approval_granted", "approval_rejected"],
    )
    # A human approver, and an agent deciding for her, enrol like anyone else: with an
    # operator's grant (the role "delegate" is the operator's to give).
    operator = stack.layout.identity("operator")
    assistant = stack.layout.identity(ASSISTANT)
    for who, key in ((card, identity), (assistant_card, assistant)):
        grant = issue_grant(who, operator, "operator")
        await register(stack.url, who, key, stack.topology.subjects, wait=20, grant=grant)
    nc = await stack.connect(APPROVER)
    now = datetime.now(UTC)
    delegation = Delegation(
        delegation_id=f"dlg-{APPROVER}-{ASSISTANT}",
        delegator=APPROVER,
        delegate=ASSISTANT,
        role="claims_manager",
        action_types=["issue_payment"],
        max_amount=DELEGATED_UP_TO,
        case_kinds=[CLAIM_KIND],
        valid_from=now,
        valid_until=now + timedelta(hours=8),
        purpose="routine payouts while dana handles the large ones",
    )
    await RegistryClient(nc, stack.topology.subjects).delegate(delegation, identity)
    return Desk(nc, identity, await stack.connect(ASSISTANT), assistant, delegation.delegation_id)


async def approve(stack: Stack, desk: Desk, approvals: Counter[str]) -> None:
    """Decides whatever is pending for the approver, until cancelled; `approvals` counts
    the decisions."""
    topology = stack.topology
    nc = desk.nc
    publisher = EventPublisher(nc.jetstream(), desk.identity, topology, nc=nc)
    assisting = EventPublisher(
        desk.assistant_nc.jetstream(), desk.assistant, topology, nc=desk.assistant_nc
    )
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
            amount = item.get("parameters", {}).get("amount")
            if (
                item["approver_role"] == "claims_manager"
                and isinstance(amount, int)
                and amount <= DELEGATED_UP_TO
            ):
                decision = _decision(item, True, ASSISTANT, desk.delegation_id)
                await _publish_until_stored(assisting, decision)
                approvals["approved by her assistant"] += 1
                continue
            # Most are approved; one in five is rejected (no receipt attached).
            grant = int(hashlib.sha256(request_id.encode()).hexdigest(), 16) % 5 != 0
            await _publish_until_stored(publisher, _decision(item, grant))
            approvals["approved" if grant else "rejected"] += 1


def _decision(
    item: dict[str, Any], grant: bool, who: str = APPROVER, delegation_id: str | None = None
) -> ApprovalGranted | ApprovalRejected:
    """The answer to one pending request, as the approver (or the assistant acting for
    her under `delegation_id`) states it."""
    envelope: dict[str, Any] = {
        "case_id": item["case_id"],
        "correlation_id": item["correlation_id"],
        "causation_id": item["required_event_id"],
        "actor": who,
    }
    about = {
        "request_id": item["request_id"],
        "approver": who,
        "request_digest": item["request_digest"],
        "delegation_id": delegation_id,
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
