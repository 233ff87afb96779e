"""Who may exist, and with what scope (issue 10, classes 2 and 3): nobody gains scope,
kind or roles without an operator's signature. Who refuses: the registry (its reason),
and then the broker (credentials and permissions come only from cards in force)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from contracts import ActionRequested, ActionRequestedPayload, CaseClosed
from contracts.cards import AgentCard, AgentKey, card_digest
from contracts.registry_api import RegistryQuery, RegistryReply
from mesh._trust.enrolment import grant_for, issue_grant, sign_grant
from mesh._trust.identity import Identity
from mesh._trust.onboarding import card_with_key
from mesh._trust.registry_client import RegistryClient, RegistryRefused
from services.agents.claims.cards import INTAKE
from tests.security.kit import Connection, Mesh, lapsed, new_ref, signed

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]


def walk_in(agent_id: str, identity: Identity, **scope: Any) -> AgentCard:
    """A card anyone could write: a known owner, an ordinary agent's scope."""
    card = AgentCard(
        agent_id=agent_id,
        name="Walk-in scorer",
        version="1",
        owner="claims-team",
        purpose="scores claims",
        produces=["case_step_completed"],
        **scope,
    )
    return card_with_key(card, identity)


async def refusal(registering: Awaitable[object]) -> str:
    with pytest.raises(RegistryRefused) as refused:
        await registering
    return refused.value.reason


async def test_an_agent_cannot_promote_itself(mesh: Mesh) -> None:
    """With its own current key, over its own connection and over the anonymous one,
    intake re-registers as a human approver, then as an agent that approves: refused.
    A wider card (a new type to produce, a new version) is only proposed: the card in
    force stays, and the broker still refuses the new type."""
    key = mesh.key("claims-intake")
    before = await mesh.stack.registry.get("claims-intake")
    channels: list[Connection] = [await mesh.connect("claims-intake"), await mesh.anonymous()]
    as_human = msgspec.structs.replace(
        card_with_key(INTAKE, key),
        version="2.0.0",
        kind="human",
        roles=["approver", "claims_manager", "head_of_claims"],
        produces=[*INTAKE.produces, "approval_granted"],
    )
    as_approving_agent = msgspec.structs.replace(as_human, kind="agent")
    for channel in channels:
        registry = RegistryClient(channel.nc, mesh.subjects)
        reason = await refusal(registry.register(as_human, key))
        assert "claims-intake is a agent; a kind never changes" in reason
        reason = await refusal(registry.register(as_approving_agent, key))
        assert "only a human with the approver role, or an agent with the role" in reason

    wider = msgspec.structs.replace(
        card_with_key(INTAKE, key),
        version="1.0.1",
        produces=[*INTAKE.produces, "action_requested"],
    )
    record = await RegistryClient(channels[0].nc, mesh.subjects).register(wider, key)
    assert record.pending_card is not None
    assert "action_requested" in record.pending_card.produces
    assert record.card == before.card
    assert record.status == "active"
    in_force = await mesh.stack.registry.get("claims-intake")
    assert in_force.card == before.card
    assert in_force.card_history == before.card_history

    # Nor can it approve its proposal itself: only an operator may ask for that, and
    # the registry takes only an operator's signature for it.
    approve = mesh.subjects.service("registry", "approve")
    await channels[0].refused_publish(approve, b"{}")
    await channels[1].refused_publish(approve, b"{}")
    reason = await refusal(
        RegistryClient(mesh.operator, mesh.subjects).approve(
            "claims-intake", card_digest(record.pending_card), "looks fine", key
        )
    )
    assert f"approve needs an operator's signature; {key.public_key} is not an operator" in reason
    assert (await mesh.stack.registry.get("claims-intake")).card == before.card

    # The broker still holds intake to the card in force.
    case_id = await mesh.open(lapsed(new_ref("promote")))
    await mesh.wait_for_event(case_id, CaseClosed)
    request = ActionRequested(
        case_id=case_id,
        actor="claims-intake",
        payload=ActionRequestedPayload(
            action_type="issue_payment",
            parameters={"amount": 100, "currency": "EUR", "payee_account": "XX-0000"},
        ),
    )
    subject = mesh.subjects.for_event(request)
    body, headers = signed(request, key, subject)
    await channels[0].refused_publish(subject, body, headers=headers)
    assert not [s for s in await mesh.history(case_id) if isinstance(s.event, ActionRequested)]


async def test_nobody_enrols_without_an_operator_s_grant(mesh: Mesh) -> None:
    """An anonymous connection registers a brand-new agent: without a grant; with
    grants signed by a stranger's key and by a real agent's key; with the operator's
    grant for another agent, and one that expired. The registry refuses each with the
    reason, and the broker knows no such user."""
    anonymous = await mesh.anonymous()
    registry = RegistryClient(anonymous.nc, mesh.subjects)
    identity = Identity.generate()
    agent_id = f"walk-in-{uuid.uuid4().hex[:8]}"
    card = walk_in(agent_id, identity)
    operator = mesh.key("operator")

    reason = await refusal(registry.register(card, identity))
    assert f"agent {agent_id} has no enrolment grant" in reason
    for forger in (Identity.generate(), mesh.key("claims-intake")):
        reason = await refusal(
            registry.register(card, identity, grant=issue_grant(card, forger, "operator"))
        )
        assert f"signed by {forger.public_key}, which is not an operator" in reason
    for_another = issue_grant(
        msgspec.structs.replace(card, agent_id="someone-else"), operator, "operator"
    )
    reason = await refusal(registry.register(card, identity, grant=for_another))
    assert f"is for agent someone-else, not {agent_id}" in reason
    expired = issue_grant(card, operator, "operator", valid_for=timedelta(seconds=-1))
    assert "expired at" in await refusal(registry.register(card, identity, grant=expired))
    narrower = issue_grant(msgspec.structs.replace(card, produces=[]), operator, "operator")
    reason = await refusal(registry.register(card, identity, grant=narrower))
    assert "case_step_completed" in reason

    assert agent_id not in {r.card.agent_id for r in await mesh.stack.registry.find()}
    assert "Authorization Violation" in await mesh.refused_connection(agent_id, identity)


async def test_an_enrolment_grant_is_good_for_one_enrolment(mesh: Mesh) -> None:
    """The operator grants an agent a scope; it enrols with less, then presents the same
    grant again to widen its card: refused, the card in force stays."""
    anonymous = await mesh.anonymous()
    registry = RegistryClient(anonymous.nc, mesh.subjects)
    identity = Identity.generate()
    agent_id = f"one-shot-{uuid.uuid4().hex[:8]}"
    wide = walk_in(agent_id, identity)
    grant = sign_grant(grant_for(wide, issued_by="operator"), mesh.key("operator"))
    narrow = msgspec.structs.replace(wide, produces=[])
    enrolled = await registry.register(narrow, identity, grant=grant)
    assert enrolled.status == "active"

    widened = msgspec.structs.replace(wide, version="2")
    reason = await refusal(registry.register(widened, identity, grant=grant))
    assert f"was already used (by {agent_id})" in reason
    record = await mesh.stack.registry.get(agent_id)
    assert record.card.produces == []
    assert record.pending_card is None


async def test_a_retired_key_never_comes_back(mesh: Mesh) -> None:
    """An agent rotates its key (the new key proves possession); then the new key
    signs a card that brings the retired one back: refused, and the broker no longer
    accepts the retired key."""
    first, second = Identity.generate(), Identity.generate()
    agent_id = f"rotor-{uuid.uuid4().hex[:8]}"
    card = walk_in(agent_id, first)
    await mesh.enrol(card, first)
    registry = RegistryClient((await mesh.anonymous()).nc, mesh.subjects)
    rotated = msgspec.structs.replace(
        card, keys=[AgentKey(public_key=second.public_key, valid_from=datetime.now(UTC))]
    )
    record = await registry.register(rotated, first, second)
    assert [k.public_key for k in record.key_history if k.valid_until is None] == [
        second.public_key
    ]

    back = msgspec.structs.replace(
        card, keys=[AgentKey(public_key=first.public_key, valid_from=datetime.now(UTC))]
    )
    reason = await refusal(registry.register(back, second, first))
    assert f"key {first.public_key} of {agent_id} was retired" in reason
    assert "a retired key never comes back" in reason
    assert "Authorization Violation" in await mesh.refused_connection(agent_id, first)
    await mesh.connect(agent_id, second)


async def test_a_flood_of_anonymous_registrations_is_throttled(mesh: Mesh) -> None:
    """An anonymous connection fires registrations as fast as it can: beyond a burst the
    registry answers "too many registrations" with when to retry, and registers none."""
    anonymous = await mesh.anonymous()
    subject = mesh.subjects.service("registry", "register")

    async def register_once(number: int) -> RegistryReply:
        identity = Identity.generate()
        body = msgspec.json.encode(walk_in(f"flood-{number}-{uuid.uuid4().hex[:6]}", identity))
        msg = await anonymous.nc.request(
            subject, body, timeout=20, headers=identity.signature_headers(subject, body)
        )
        return msgspec.json.decode(msg.data, type=RegistryReply)

    replies = await asyncio.gather(*(register_once(n) for n in range(120)))
    throttled = [r for r in replies if r.retry_after is not None]
    refused = [r for r in replies if r.retry_after is None]
    assert throttled, "no registration was throttled"
    assert all((r.retry_after or 0) > 0 for r in throttled)
    assert all("too many registrations just now" in (r.error or "") for r in throttled)
    assert all(not r.ok and "has no enrolment grant" in (r.error or "") for r in refused)
    flooded = await mesh.stack.registry.find(RegistryQuery())
    assert not [r for r in flooded if r.card.agent_id.startswith("flood-")]
