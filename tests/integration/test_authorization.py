"""require_authorization on an open broker, where anyone may write anything: only the
decisions of a principal whose card produces them (the policy service), citing the
exact request's bytes, count — and a log holding two events under one id proves
nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from nats.aio.client import Client

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionRequested,
    ActionRequestedPayload,
    AgentCard,
    AgentKey,
    DecisionProvenance,
)
from contracts.cards import CardPeriod
from contracts.codec import encode
from contracts.registry_api import PrincipalKeys
from mesh import Identity
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._broker.topology import Topology
from mesh._trust.authorization import NotAuthorized, require_authorization
from mesh._trust.identity import message_digest
from mesh._trust.key_directory import KeyDirectory

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
PRODUCES = {
    "policy": ["action_approved", "action_denied", "approval_required"],
    "adjudicator": ["action_requested"],
    "mallory": ["case_step_completed"],
}


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
                cards=[
                    CardPeriod(
                        card=AgentCard(
                            agent_id=name,
                            name=name,
                            version="1",
                            owner="o",
                            purpose="p",
                            produces=PRODUCES[name],
                        ),
                        valid_from=EPOCH,
                    )
                ],
            )
            for name, identity in identities.items()
        ]
    )
    return keys


def approval(request_id: str, actor: str, digest: str) -> ActionApproved:
    return ActionApproved(
        case_id="c-1",
        actor=actor,
        payload=ActionDecisionPayload(
            request_id=request_id,
            action_type="issue_payment",
            provenance=DecisionProvenance(policy_bundle_hash="abc"),
            request_digest=digest,
        ),
    )


async def test_only_the_policy_service_s_decision_of_these_bytes_authorizes(
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
    [stored] = await read_case(js, provisioned, "c-1")
    digest = message_digest(stored.subject, stored.body)

    async def prove(request_id: str = request.event_id) -> object:
        return await require_authorization(
            await read_case(js, provisioned, "c-1"), keys, request_id=request_id
        )

    # Mallory's "decision" (her card produces no decisions), and one claiming to be the
    # policy's but signed by Mallory.
    mallorys = EventPublisher(js, mallory, provisioned)
    await mallorys.publish(approval(request.event_id, "mallory", digest))
    await mallorys.publish(approval(request.event_id, "policy", digest))
    with pytest.raises(NotAuthorized, match="no approving decision") as refused:
        await prove()
    assert "card in force" in refused.value.reason
    assert "belongs to mallory, not to actor policy" in refused.value.reason

    # The policy's decision about other bytes does not count either.
    policys = EventPublisher(js, policy, provisioned)
    await policys.publish(approval(request.event_id, "policy", "0" * 64))
    with pytest.raises(NotAuthorized, match="judged other bytes"):
        await prove()

    await policys.publish(approval(request.event_id, "policy", digest))
    proof = await prove()
    assert proof.decision.actor == "policy"  # type: ignore[attr-defined]
    assert proof.request_digest == digest  # type: ignore[attr-defined]
    assert proof.approval is None  # type: ignore[attr-defined]

    with pytest.raises(NotAuthorized, match="no such action_requested"):
        await prove("nope")


async def test_two_events_under_one_id_prove_nothing(nc: Client, provisioned: Topology) -> None:
    """The requester re-publishes its request under the same event id (a fresh
    Nats-Msg-Id gets it past de-duplication) with the amount raised and the payee
    changed, after policy approved the first: nothing is executed."""
    policy, agent = Identity.generate(), Identity.generate()
    keys = directory(policy=policy, adjudicator=agent)
    js = nc.jetstream()
    request = ActionRequested(
        case_id="c-1",
        actor="adjudicator",
        payload=ActionRequestedPayload(
            action_type="issue_payment", parameters={"amount": 1, "payee": "A"}
        ),
    )
    publisher = EventPublisher(js, agent, provisioned)
    await publisher.publish(request)
    [stored] = await read_case(js, provisioned, "c-1")
    digest = message_digest(stored.subject, stored.body)
    await EventPublisher(js, policy, provisioned).publish(
        approval(request.event_id, "policy", digest)
    )
    swapped = ActionRequested(
        event_id=request.event_id,
        case_id="c-1",
        actor="adjudicator",
        payload=ActionRequestedPayload(
            action_type="issue_payment", parameters={"amount": 4_900_000, "payee": "B"}
        ),
    )
    subject = provisioned.subjects.for_event(swapped)
    body = encode(swapped)
    headers = agent.signature_headers(subject, body)
    headers["Nats-Msg-Id"] = "fresh"
    await publisher.publish_raw(subject, body, headers)
    with pytest.raises(NotAuthorized, match="2 different events under this id"):
        await require_authorization(
            await read_case(js, provisioned, "c-1"), keys, request_id=request.event_id
        )
