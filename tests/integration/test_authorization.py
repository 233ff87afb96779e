"""require_authorization on an open broker, where anyone may write anything: only the
policy service's signed decisions (and a real human's approval) count."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from nats.aio.client import Client

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionRequested,
    ActionRequestedPayload,
    AgentKey,
    DecisionProvenance,
)
from contracts.registry_api import PrincipalKeys
from mesh import Identity
from mesh.authorization import NotAuthorized, require_authorization
from mesh.key_directory import KeyDirectory
from mesh.publisher import EventPublisher
from mesh.topology import Topology

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def directory(**identities: Identity) -> KeyDirectory:
    keys = KeyDirectory()
    keys.load(
        [
            PrincipalKeys(
                agent_id=name,
                status="active",
                status_changed_at=EPOCH,
                updated_at=EPOCH,
                key_history=[AgentKey(public_key=identity.public_key, valid_from=EPOCH)],
            )
            for name, identity in identities.items()
        ]
    )
    return keys


def approval(request_id: str, actor: str) -> ActionApproved:
    return ActionApproved(
        case_id="c-1",
        actor=actor,
        payload=ActionDecisionPayload(
            request_id=request_id,
            action_type="issue_payment",
            provenance=DecisionProvenance(policy_bundle_hash="abc"),
        ),
    )


async def test_only_the_policy_service_s_decision_authorizes(
    nc: Client, provisioned: Topology
) -> None:
    policy, agent, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    keys = directory(policy=policy, adjudicator=agent, mallory=mallory)
    js = nc.jetstream()
    request = ActionRequested(
        case_id="c-1",
        actor="adjudicator",
        payload=ActionRequestedPayload(action_type="issue_payment", parameters={"amount": 1}),
    )
    await EventPublisher(js, agent, provisioned).publish(request)

    # Mallory's "decision", and one claiming to be the policy's but signed by Mallory.
    await EventPublisher(js, mallory, provisioned).publish(approval(request.event_id, "mallory"))
    await EventPublisher(js, mallory, provisioned).publish(approval(request.event_id, "policy"))
    with pytest.raises(NotAuthorized, match="no approving decision") as refused:
        await require_authorization(
            js, provisioned, keys, case_id="c-1", request_id=request.event_id
        )
    assert "by mallory" in refused.value.reason
    assert "belongs to mallory, not to actor policy" in refused.value.reason

    await EventPublisher(js, policy, provisioned).publish(approval(request.event_id, "policy"))
    proof = await require_authorization(
        js, provisioned, keys, case_id="c-1", request_id=request.event_id
    )
    assert proof.decision.actor == "policy"
    assert proof.approval is None

    with pytest.raises(NotAuthorized, match="no such action_requested"):
        await require_authorization(js, provisioned, keys, case_id="c-1", request_id="nope")
