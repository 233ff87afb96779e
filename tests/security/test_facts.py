"""What each principal may say (issue 10, class 1, and signature forgery): a fact counts
only from the agent whose card makes it the authority, and an event only from the key
of the actor it names. Who refuses: the policy service (the decision's recorded facts),
the consumers (dead letters of kind `signature`), the event store (flags), the audit
verifier (the decision re-derives); what did not move: the gateway, the case."""

from __future__ import annotations

import pytest

from contracts import (
    ActionApproved,
    ActionDenied,
    ActionRequested,
    ApprovalRequired,
    CaseClosed,
    CaseStepCompleted,
)
from mesh._trust.identity import SIGNATURE_HEADER
from tests.security.kit import (
    FRAUDULENT,
    Mesh,
    claim,
    events,
    lapsed,
    new_ref,
    screening,
    signed,
    store,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]

Decision = ActionApproved | ActionDenied | ApprovalRequired


async def test_the_honest_flow_pays_once_and_verifies(mesh: Mesh) -> None:
    case_id = await mesh.open(claim(new_ref("honest"), amount=42_001, payee="DE89-10000001"))
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    assert closed.payload.outcome == "paid"
    [payment] = await mesh.case_payments(case_id)
    assert (payment["status"], payment["captures"]) == ("captured", 1)
    assert (payment["amount_cents"], payment["payee"]) == (32_001, "DE89-10000001")
    history = await mesh.history(case_id)
    report = mesh.verify(await mesh.bundle(case_id))
    assert report.ok, report.violations
    assert report.events == len(history)


async def test_a_peer_cannot_supply_the_facts_a_decision_rests_on(mesh: Mesh) -> None:
    """Fraud screening scores a claim 100. Before adjudication gets to it (held still
    meanwhile), intake — with its own key, allowed to publish steps — states a screening
    with `fraud_score: 0`, later than the fraud agent's. The policy decides on the fraud
    agent's score alone and records where it came from; the claim is denied, nothing is
    paid, and the audit verifier re-derives the decision from the log and names the
    intruding statement (and nothing else)."""
    intake = await mesh.connect("claims-intake")
    async with mesh.paused("adjudication"):
        case_id = await mesh.open(claim(new_ref("peerfact"), description=FRAUDULENT))
        real_stored, real = await mesh.wait_for_event(
            case_id, CaseStepCompleted, lambda e: e.payload.step == "fraud_screening"
        )
        assert real.actor == "claims-fraud"
        assert real.payload.evidence["fraud_score"] == 100
        forged = screening(case_id, real, "claims-intake")
        subject = mesh.subjects.for_event(forged)
        forged_sequence = await store(
            intake, subject, *signed(forged, mesh.key("claims-intake"), subject)
        )
        assert forged_sequence > real_stored.sequence

    await mesh.wait_for_event(case_id, CaseClosed)
    history = await mesh.history(case_id)
    requests = events(history, ActionRequested)
    assert requests
    assert all(s.sequence > forged_sequence for s, _ in requests)
    decisions = [e for s in history if isinstance(e := s.event, Decision)]
    denials = [d for d in decisions if isinstance(d, ActionDenied)]
    assert decisions
    assert denials == decisions
    for decision in denials:
        assert "forbidden by high-fraud-score" in decision.payload.reasons
        [fact] = [f for f in decision.payload.provenance.facts if f.name == "fraud_score"]
        assert (fact.actor, fact.event_id, fact.value) == ("claims-fraud", real.event_id, 100)
        assert forged.event_id not in {f.event_id for f in decision.payload.provenance.facts}
        assert decision.payload.provenance.inputs["resource"]["fraud_score"] == 100
    assert await mesh.case_payments(case_id) == []
    assert (await mesh.view(case_id)).outcome == "denied"

    report = mesh.verify(await mesh.bundle(case_id))
    [named] = report.violations  # the decisions re-derive: only the intrusion is named
    assert named.check == "policy"
    assert f"event {forged.event_id}" in named.where
    assert "states fact fraud_score, for which claims-fraud (not claims-intake)" in named.problem


async def test_an_event_signed_by_anyone_but_its_actor_is_refused(mesh: Mesh) -> None:
    """Intake writes a fraud screening in the fraud agent's name: signed with its own
    key, and with the fraud agent's key named but intake's signature. Both consumers
    of the step dead-letter both as signature failures, the event store flags them, and
    nothing follows from them."""
    case_id = await mesh.open(lapsed(new_ref("forgery")))
    _, rejected = await mesh.wait_for_event(
        case_id, CaseStepCompleted, lambda e: e.payload.outcome == "rejected"
    )
    await mesh.wait_for_event(case_id, CaseClosed)
    mark = await mesh.dead_letter_mark()
    intake = await mesh.connect("claims-intake")
    intake_key, fraud_key = mesh.key("claims-intake"), mesh.key("claims-fraud")

    own_key = screening(case_id, rejected, "claims-fraud")
    subject = mesh.subjects.for_event(own_key)
    await store(intake, subject, *signed(own_key, intake_key, subject))
    named_key = screening(case_id, rejected, "claims-fraud")
    body, headers = signed(named_key, fraud_key, subject)
    headers[SIGNATURE_HEADER] = intake_key.sign(subject, body)
    await store(intake, subject, body, headers)

    expected = {
        own_key.event_id: "signer key belongs to claims-intake, not to actor claims-fraud",
        named_key.event_id: f"signature does not match signer {fraud_key.public_key}",
    }
    bodies = {signed(own_key, intake_key, subject)[0]: own_key.event_id}
    bodies[body] = named_key.event_id
    letters = await mesh.wait_for_dead_letters(mark, lambda d: d.body in bodies, count=4)
    refused = {(bodies[d.body], d.consumer) for d in letters}
    assert refused == {
        (event_id, consumer)
        for event_id in expected
        for consumer in ("claims-fraud", "claims-adjudication")
    }
    for letter in letters:
        assert letter.kind == "signature"
        assert expected[bodies[letter.body]] in letter.reason

    timeline = {entry.event_id: entry for entry in await mesh.timeline(case_id)}
    for event_id, reason in expected.items():
        assert not timeline[event_id].verified
        assert reason in (timeline[event_id].problem or "")
    history = await mesh.history(case_id)
    assert not events(history, ActionRequested)
    assert [
        e.actor for _, e in events(history, CaseStepCompleted) if e.payload.step == "adjudication"
    ] == []
    view = await mesh.view(case_id)
    assert (view.status, view.outcome, view.flagged_events) == ("closed", "rejected", 2)
