"""Explicit delegation against a real mesh under the registry's enforcement: a claims
manager hands an agent part of her authority to approve payouts; its approval within
the delegation passes policy and records whom it acted for, one beyond it is refused,
and revoking the delegation stops the next one. The registry refuses a delegation
that gives more than its delegator holds, or that is passed on without leave."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contracts import (
    ActionApproved,
    ActionGrant,
    AgentCard,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRequired,
)
from contracts.delegation import Delegation
from mesh import Identity
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._runtime.dead_letters import read_dead_letters
from mesh._trust.onboarding import connect_as, register
from mesh.errors import RegistryRefused
from mesh.testing import eventually
from tests.integration.claims_flow import open_claim, start_agents
from tests.integration.claims_flow import wait_for as first
from tests.integration.registry_fixtures import KNOWN_OWNER, SecuredMesh, secured_mesh
from tests.integration.test_policy import REFERENCE


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    async with secured_mesh(tmp_path) as secured:
        yield secured


async def _enrolled(mesh: SecuredMesh, card: AgentCard) -> tuple[Identity, object]:
    identity = Identity.generate()
    await mesh.enrol(card, identity)
    record = await register(mesh.url, card, identity, mesh.topology.subjects, wait=5)
    assert record.status == "active"
    nc = await connect_as(mesh.url, card.agent_id, identity)
    mesh.connections.append(nc)
    return identity, nc


def _card(agent_id: str, kind: str, roles: list[str], limit: int | None = None) -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        name=agent_id,
        version="1",
        owner=KNOWN_OWNER,
        purpose="decides payout approvals",
        kind=kind,  # type: ignore[arg-type]
        roles=roles,
        produces=["approval_granted", "approval_rejected"],
        actions=[ActionGrant(action_type="issue_payment", limits={"max_amount": limit})]
        if limit
        else [],
    )


def _delegation(delegation_id: str, delegator: str, delegate: str, **changes: object) -> Delegation:
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "delegation_id": delegation_id,
        "delegator": delegator,
        "delegate": delegate,
        "role": "claims_manager",
        "action_types": ["issue_payment"],
        "max_amount": 500_000,
        "case_kinds": ["insurance_claim"],
        "valid_from": now - timedelta(minutes=1),
        "valid_until": now + timedelta(hours=8),
        **changes,
    }
    return Delegation(**fields)  # type: ignore[arg-type]


async def _bot_grants(
    mesh: SecuredMesh, bot: Identity, nc: object, case_id: str, delegation_id: str
) -> ApprovalGranted:
    required = await first(mesh, case_id, ApprovalRequired)
    grant = ApprovalGranted(
        case_id=case_id,
        actor="approval-bot",
        payload=ApprovalGrantedPayload(
            request_id=required.payload.request_id,  # type: ignore[attr-defined]
            approver="approval-bot",
            request_digest=required.payload.request_digest,  # type: ignore[attr-defined]
            delegation_id=delegation_id,
        ),
    )
    await EventPublisher(nc.jetstream(), bot, mesh.topology).publish(grant)  # type: ignore[attr-defined]
    return grant


async def _refusal(mesh: SecuredMesh, grant: ApprovalGranted) -> str:
    assert mesh.harness_nc is not None

    async def found() -> str | None:
        letters = await read_dead_letters(mesh.harness_nc.jetstream(), mesh.topology)  # type: ignore[union-attr]
        return next(
            (
                letter.reason
                for letter in letters
                if letter.consumer == "policy" and grant.event_id.encode() in letter.body
            ),
            None,
        )

    return await eventually(found, what="the policy's refusal of the grant")


async def test_a_delegate_approves_within_its_delegation_and_not_beyond_or_after_revocation(
    mesh: SecuredMesh,
) -> None:
    await mesh.start_policy(REFERENCE)
    await start_agents(mesh)
    maria, maria_nc = await _enrolled(
        mesh, _card("maria", "human", ["approver", "claims_manager"], limit=800_000)
    )
    bot, bot_nc = await _enrolled(mesh, _card("approval-bot", "agent", ["delegate"]))
    await _enrolled(mesh, _card("approval-bot-2", "agent", ["delegate"]))
    maria_registry = mesh.client(maria_nc)  # type: ignore[arg-type]

    # Never more than she holds: her own limit, her own role; and no passing on.
    with pytest.raises(RegistryRefused, match="above maria's own limit 800000"):
        await maria_registry.delegate(
            _delegation("D-0", "maria", "approval-bot", max_amount=900_000), maria
        )
    with pytest.raises(RegistryRefused, match="deciding this needs the role 'head_of_claims'"):
        await maria_registry.delegate(
            _delegation("D-0", "maria", "approval-bot", role="head_of_claims"), maria
        )
    await maria_registry.delegate(_delegation("D-1", "maria", "approval-bot"), maria)
    with pytest.raises(RegistryRefused, match="D-1 may not be passed on"):
        await mesh.client(bot_nc).delegate(  # type: ignore[arg-type]
            _delegation("D-2", "approval-bot", "approval-bot-2", parent="D-1"), bot
        )

    # Within the delegation: approved, and the decision records whom it acted for.
    await open_claim(mesh, "within", 250_000)
    grant = await _bot_grants(mesh, bot, bot_nc, "within", "D-1")
    approved = await first(mesh, "within", ActionApproved)
    assert approved.payload.approval_id == grant.event_id  # type: ignore[attr-defined]
    assert approved.payload.acting_for == "maria"  # type: ignore[attr-defined]
    assert approved.payload.delegations == ["D-1"]  # type: ignore[attr-defined]
    assert any(
        "delegated-approvals-within-the-delegation" in r
        for r in approved.payload.reasons  # type: ignore[attr-defined]
    )

    # Beyond it: refused with the reason; the request still waits for a person.
    await open_claim(mesh, "beyond", 700_000)
    over = await _bot_grants(mesh, bot, bot_nc, "beyond", "D-1")
    assert "amount 700000 above its max_amount 500000" in await _refusal(mesh, over)

    # Revoked: the next approval under it does not count.
    await maria_registry.revoke_delegation("D-1", "back from leave", maria)
    await open_claim(mesh, "after", 250_000)
    late = await _bot_grants(mesh, bot, bot_nc, "after", "D-1")
    assert "delegation D-1 was revoked" in await _refusal(mesh, late)
    assert mesh.harness_nc is not None
    for case_id in ("beyond", "after"):
        history = await read_case(mesh.harness_nc.jetstream(), mesh.topology, case_id)
        assert not any(isinstance(s.event, ActionApproved) for s in history)
