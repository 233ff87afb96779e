"""What the broker already refuses, kept refused: each principal publishes only what its
card (or role) says, uses no JetStream API beyond its own durables, and reads no one
else's inbox. Who refuses: the broker (a permissions violation on the attacker's own
connection); what did not move: the case log, the approvals waiting, the gateway."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from nats.aio.msg import Msg

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionRequested,
    ActionRequestedPayload,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRequired,
    CaseClosed,
    CaseClosedPayload,
    DecisionProvenance,
)
from mesh._trust.identity import message_digest
from mesh.testing import eventually
from tests.security.kit import Mesh, claim, lapsed, new_ref, signed

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]


async def test_an_agent_publishes_only_the_event_types_on_its_card(mesh: Mesh) -> None:
    case_id = await mesh.open(lapsed(new_ref("offcard")))
    await mesh.wait_for_event(case_id, CaseClosed)
    before = [s.sequence for s in await mesh.history(case_id)]
    intake = await mesh.connect("claims-intake")
    fraud = await mesh.connect("claims-fraud")

    # Intake asks for a payment (its card produces no action_requested); fraud screening
    # closes the case (its card produces no case_closed).
    request = ActionRequested(
        case_id=case_id,
        actor="claims-intake",
        payload=ActionRequestedPayload(
            action_type="issue_payment",
            parameters={"amount": 99_000, "currency": "EUR", "payee_account": "XX-0000"},
        ),
    )
    subject = mesh.subjects.for_event(request)
    body, headers = signed(request, mesh.key("claims-intake"), subject)
    await intake.refused_publish(subject, body, headers=headers)
    closing = CaseClosed(
        case_id=case_id, actor="claims-fraud", payload=CaseClosedPayload(outcome="paid")
    )
    subject = mesh.subjects.for_event(closing)
    body, headers = signed(closing, mesh.key("claims-fraud"), subject)
    await fraud.refused_publish(subject, body, headers=headers)

    assert [s.sequence for s in await mesh.history(case_id)] == before
    assert (await mesh.view(case_id)).outcome == "rejected"


async def test_no_agent_can_forge_a_decision_an_approval_or_registry_history(
    mesh: Mesh,
) -> None:
    """A large payout waits for a human. The requester forges the policy's approval,
    the payment agent a human's grant, intake its own activation: the broker refuses
    every one, nothing is approved and nothing is paid."""
    case_id = await mesh.open(claim(new_ref("forged"), amount=300_001))
    _, required = await mesh.wait_for_event(case_id, ApprovalRequired)
    [(request_stored, request)] = [
        (s, s.event) for s in await mesh.history(case_id) if isinstance(s.event, ActionRequested)
    ]
    digest = message_digest(request_stored.subject, request_stored.body)

    adjudication = await mesh.connect("claims-adjudication")
    forged_decision = ActionApproved(
        case_id=case_id,
        correlation_id=request.correlation_id,
        causation_id=request.event_id,
        actor="policy",
        payload=ActionDecisionPayload(
            request_id=request.event_id,
            action_type="issue_payment",
            provenance=DecisionProvenance(
                policy_bundle_hash=required.payload.provenance.policy_bundle_hash
            ),
            reasons=["permitted by small-payouts"],
            request_digest=digest,
        ),
    )
    subject = mesh.subjects.for_event(forged_decision)
    body, headers = signed(forged_decision, mesh.key("claims-adjudication"), subject)
    await adjudication.refused_publish(subject, body, headers=headers)

    payment = await mesh.connect("claims-payment")
    forged_grant = ApprovalGranted(
        case_id=case_id,
        correlation_id=request.correlation_id,
        causation_id=required.event_id,
        actor="claims-payment",
        payload=ApprovalGrantedPayload(
            request_id=request.event_id, approver="claims-payment", request_digest=digest
        ),
    )
    subject = mesh.subjects.for_event(forged_grant)
    body, headers = signed(forged_grant, mesh.key("claims-payment"), subject)
    await payment.refused_publish(subject, body, headers=headers)

    intake = await mesh.connect("claims-intake")
    await intake.refused_publish(
        mesh.subjects.family_event("registry", "claims-intake", "agent_activated"), b"{}"
    )

    history = await mesh.history(case_id)
    assert not [s for s in history if isinstance(s.event, ActionApproved | ApprovalGranted)]
    assert await mesh.case_payments(case_id) == []
    waiting = await mesh.pending(await mesh.connect("operator"))
    assert request.event_id in [item["request_id"] for item in waiting]


async def test_no_principal_uses_the_jetstream_api_beyond_its_own_durables(
    mesh: Mesh,
) -> None:
    """An agent would read the whole log through a consumer of its own, steal or ack
    another agent's deliveries, purge the audit log, read and write the key-value views
    (pending approvals with payees, the registry's records) or ask the event store for
    every case; an outside system and an anonymous connection would inspect streams.
    The broker refuses each."""
    cases = mesh.topology.cases_stream
    root = mesh.topology.root.upper()
    consumer = {
        "stream_name": cases,
        "config": {"ack_policy": "none", "deliver_subject": "_INBOX.claims-intake.spy"},
    }
    attempts: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "claims-intake": [
            (f"$JS.API.CONSUMER.CREATE.{cases}", consumer),
            (f"$JS.API.CONSUMER.DURABLE.CREATE.{cases}.spy", consumer),
            (f"$JS.API.CONSUMER.MSG.NEXT.{cases}.claims-payment", {"batch": 10}),
            (f"$JS.ACK.{cases}.claims-payment.1.1.1.1.0", {}),
            (f"$JS.API.CONSUMER.DELETE.{cases}.claims-payment", {}),
            (f"$JS.API.STREAM.PURGE.{cases}", {}),
            (f"$JS.API.STREAM.DELETE.{cases}", {}),
            (f"$JS.API.STREAM.MSG.DELETE.{cases}", {"seq": 1}),
            (f"$JS.API.STREAM.INFO.KV_{root}_APPROVALS", {}),
            (f"$JS.API.DIRECT.GET.KV_{root}_APPROVALS", {"last_by_subj": "$KV.x.>"}),
            (f"$KV.{root}_APPROVALS.forged", {}),
            (f"$KV.{root}_AGENTS.claims-intake", {}),
            (f"$JS.API.DIRECT.GET.KV_{root}_AGENTS", {"seq": 1}),
            # the event store's views of every case: only operators and services ask
            (mesh.subjects.service("eventstore", "cases"), {}),
            (mesh.subjects.service("eventstore", "timeline"), {"case_id": "crm-x"}),
        ],
        "crm": [
            (f"$JS.API.STREAM.INFO.{cases}", {}),
            (f"$JS.API.DIRECT.GET.{cases}", {"seq": 1}),
            (mesh.subjects.case_event("crm-x", "case_opened"), {}),
        ],
        "onboarding": [
            ("$JS.API.INFO", {}),
            (mesh.subjects.service("registry", "list"), {}),
            (f"$JS.API.DIRECT.GET.{cases}", {"seq": 1}),
        ],
    }
    info = await mesh.operator.jetstream().stream_info(cases)
    for principal, requests in attempts.items():
        attacker = await (
            mesh.anonymous() if principal == "onboarding" else mesh.connect(principal)
        )
        for subject, request in requests:
            await attacker.refused_publish(subject, json.dumps(request).encode())

    after = await mesh.operator.jetstream().stream_info(cases)
    assert after.state.first_seq == info.state.first_seq
    assert after.state.messages >= info.state.messages
    consumers = {c.name for c in await mesh.operator.jetstream().consumers_info(cases)}
    assert "spy" not in consumers
    work = mesh.topology.work_stream
    working = {c.name for c in await mesh.operator.jetstream().consumers_info(work)}
    assert "spy" not in working
    assert set(mesh.topology.partition_durables("claims-payment")) <= working


async def test_no_principal_reads_another_s_inbox_or_listens_to_the_log(mesh: Mesh) -> None:
    """Intake listens on the crm system's inbox (where the ingress answers it), on every
    inbox, and on the case log's subjects; an anonymous connection on an agent's inbox.
    The broker refuses each subscription, and nothing reaches them."""
    received: list[Msg] = []

    async def keep(msg: Msg) -> None:
        received.append(msg)

    intake = await mesh.connect("claims-intake")
    anonymous = await mesh.anonymous()
    listening = [
        (intake, "_INBOX.crm.>"),
        (intake, "_INBOX.>"),
        (intake, mesh.subjects.family_all("case")),
        (anonymous, "_INBOX.claims-intake.>"),
    ]
    for attacker, subject in listening:
        await attacker.nc.subscribe(subject, cb=keep)
        await attacker.nc.flush()
        await eventually(
            lambda a=attacker, s=subject: a.refused(s, "subscription"),
            timeout=10,
            what=f"the broker refusing a subscription to {subject}",
        )

    # A case runs from end to end meanwhile: the crm system's answer, every event of
    # the case, intake's own replies from the registry go by; none reaches them.
    case_id = await mesh.open(lapsed(new_ref("inbox")))
    await mesh.wait_for_event(case_id, CaseClosed)
    await mesh.pending(intake)
    for attacker, _ in listening:
        await attacker.nc.flush()
    assert received == []


async def test_the_payment_gateway_takes_calls_only_with_its_credential(mesh: Mesh) -> None:
    """Anything on the host can reach the simulated gateway's port. Without the
    gateway's credential — no token, the crm system's ingress token — nobody authorizes,
    captures or reads a payment. Who refuses: the gateway; what did not move: its ledger."""
    before = await mesh.ledger()
    payment = {
        "idempotency_key": new_ref("direct"),
        "amount_cents": 4_900_000,
        "currency": "EUR",
        "payee_account": "XX-88888888",
    }
    crm_token = mesh.stack.layout.http_token("crm")
    async with httpx.AsyncClient(base_url=mesh.stack.gateway_http, timeout=10) as http:
        for headers in ({}, {"Authorization": f"Bearer {crm_token}"}):
            authorized = await http.post("/v1/payments", json=payment, headers=headers)
            assert authorized.status_code == 401
            for path in ("/v1/payments/pay-000000000000/capture", "/v1/payments/x/void"):
                assert (await http.post(path, headers=headers)).status_code == 401
            assert (await http.get("/v1/ledger", headers=headers)).status_code == 401
    assert await mesh.ledger() == before
