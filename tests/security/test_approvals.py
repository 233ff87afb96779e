"""Human approvals (already refused before issue 10's fixes; kept refused): the
requester can never approve its own request, and only a human holding the role the
policy asks for decides. Who refuses: the policy service (it dead-letters the approval
with the reason); what did not move: the decision, the gateway. And should a decision
cite such a grant anyway (the policy service's own key, compromised), the payment agent
refuses it by the same rule before any money moves, and the audit names it."""

from __future__ import annotations

import uuid

import pytest

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionFailed,
    ActionRequested,
    ActionRequestedPayload,
    ApprovalRequired,
    CaseClosed,
    CaseStepCompleted,
)
from contracts.cards import ActionGrant
from tests.security.kit import Mesh, claim, events, new_ref, signed, store

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]


async def test_a_requester_cannot_approve_its_own_request(mesh: Mesh) -> None:
    """A claims manager who may also request payments asks — before adjudication does
    (held still meanwhile) — to pay a large claim within what was claimed, to the
    claim's payee, so that policy asks a human; and approves it himself (citing the
    digest the pending list shows him)."""
    sam_id = f"sam-{uuid.uuid4().hex[:6]}"
    sam = await mesh.human(
        sam_id,
        roles=["approver", "claims_manager"],
        produces=["approval_granted", "action_requested"],
        actions=[ActionGrant(action_type="issue_payment")],
    )
    assert sam.identity is not None
    body = claim(new_ref("selfapprove"), amount=250_000)
    async with mesh.paused("adjudication"):
        case_id = await mesh.open(body)
        _, screened = await mesh.wait_for_event(
            case_id, CaseStepCompleted, lambda e: e.payload.step == "fraud_screening"
        )
        request = ActionRequested(
            case_id=case_id,
            correlation_id=screened.correlation_id,
            causation_id=screened.event_id,
            actor=sam_id,
            payload=ActionRequestedPayload(
                action_type="issue_payment",
                parameters={
                    "amount": 200_000,
                    "currency": "EUR",
                    "payee_account": body["data"]["payee_account"],
                },
            ),
        )
        subject = mesh.subjects.for_event(request)
        await store(sam, subject, *signed(request, sam.identity, subject))
        await mesh.wait_for_event(
            case_id, ApprovalRequired, lambda e: e.payload.request_id == request.event_id
        )
    [item] = [i for i in await mesh.pending(sam) if i["request_id"] == request.event_id]
    assert item["requester"] == sam_id
    mark = await mesh.dead_letter_mark()
    approval = await mesh.approve(sam, item)

    [refused] = await mesh.wait_for_dead_letters(
        mark, lambda d: d.consumer == "policy" and approval.event_id.encode() in d.body
    )
    assert refused.kind == "permanent"
    assert f"approval refused: {sam_id} requested issue_payment itself and cannot decide it" in (
        refused.reason
    )
    assert not events(await mesh.history(case_id), ActionApproved)
    assert await mesh.case_payments(case_id) == []
    waiting = await mesh.pending(await mesh.connect("operator"))
    assert request.event_id in [i["request_id"] for i in waiting]


async def test_only_an_approver_of_the_role_asked_decides(mesh: Mesh) -> None:
    """A large payout waits for a claims manager. A clerk — a human approver, but not a
    claims manager — grants it: refused. Then a claims manager grants it, and the claim
    is paid once, as approved, and verifies."""
    clerk = await mesh.human(
        f"clerk-{uuid.uuid4().hex[:6]}", roles=["approver"], produces=["approval_granted"]
    )
    case_id = await mesh.open(claim(new_ref("role"), amount=300_001, payee="DE89-70000007"))
    _, required = await mesh.wait_for_event(case_id, ApprovalRequired)
    operator = await mesh.connect("operator")
    [item] = [i for i in await mesh.pending(operator) if i["case_id"] == case_id]
    mark = await mesh.dead_letter_mark()
    approval = await mesh.approve(clerk, item)
    [refused] = await mesh.wait_for_dead_letters(
        mark, lambda d: d.consumer == "policy" and approval.event_id.encode() in d.body
    )
    assert "approval refused: deciding this needs the role 'claims_manager'" in refused.reason
    assert not events(await mesh.history(case_id), ActionApproved)

    await mesh.approve(await mesh.human(), item)
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    assert closed.payload.outcome == "paid"
    [(_, approved)] = events(await mesh.history(case_id), ActionApproved)
    assert approved.payload.approver == "dana"
    assert approved.payload.request_digest == required.payload.request_digest
    [payment] = await mesh.case_payments(case_id)
    assert (payment["amount_cents"], payment["payee"], payment["captures"]) == (
        290_001,
        "DE89-70000007",
        1,
    )
    report = mesh.verify(await mesh.bundle(case_id))
    assert report.ok, report.violations


async def test_a_grant_without_the_role_asked_moves_no_money_even_when_approved(
    mesh: Mesh,
) -> None:
    """A large payout waits for a claims manager. A clerk — an enrolled human whose card
    produces grants, but who is no claims manager — grants it: the policy service
    refuses. Then the policy service's own key approves the payout citing the clerk's
    grant: the payment agent re-checks the chain before it pays and refuses it by the
    same rule (NotAuthorized, recorded as action_failed with the reason); the gateway
    holds nothing, and the audit names the decision."""
    clerk_id = f"clerk-{uuid.uuid4().hex[:6]}"
    clerk = await mesh.human(clerk_id, roles=["approver"], produces=["approval_granted"])
    case_id = await mesh.open(claim(new_ref("norole"), amount=300_001, payee="DE89-70000042"))
    _, required = await mesh.wait_for_event(case_id, ApprovalRequired)
    assert required.payload.approver_role == "claims_manager"
    [item] = [
        i for i in await mesh.pending(await mesh.connect("operator")) if i["case_id"] == case_id
    ]
    mark = await mesh.dead_letter_mark()
    grant = await mesh.approve(clerk, item)
    [refused] = await mesh.wait_for_dead_letters(
        mark, lambda d: d.consumer == "policy" and grant.event_id.encode() in d.body
    )
    assert "approval refused: deciding this needs the role 'claims_manager'" in refused.reason

    policy = await mesh.connect("policy")
    approved = ActionApproved(
        case_id=case_id,
        correlation_id=required.correlation_id,
        causation_id=grant.event_id,
        actor="policy",
        payload=ActionDecisionPayload(
            request_id=required.payload.request_id,
            action_type="issue_payment",
            provenance=required.payload.provenance,
            reasons=[f"approved by {clerk_id}"],
            approval_id=grant.event_id,
            approver=clerk_id,
            request_digest=required.payload.request_digest,
        ),
    )
    subject = mesh.subjects.for_event(approved)
    await store(policy, subject, *signed(approved, mesh.key("policy"), subject))

    _, failed = await mesh.wait_for_event(
        case_id, ActionFailed, lambda e: e.payload.request_id == required.payload.request_id
    )
    assert failed.actor == "claims-payment"
    assert (
        f"not executed: approval by {clerk_id} does not count: deciding this needs the role "
        f"'claims_manager'; {clerk_id} has ['approver']"
    ) in failed.payload.error
    assert await mesh.case_payments(case_id) == []
    report = mesh.verify(await mesh.bundle(case_id))
    assert [
        v.problem
        for v in report.violations
        if v.check == "policy" and f"event {approved.event_id}" in v.where
    ] == [
        f"relies on {clerk_id}'s grant, but {clerk_id} was not a human claims_manager when "
        "it was given"
    ]
