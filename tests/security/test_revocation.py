"""Revocation is immediate (issue 10, class 4): nobody acts on a message with a key
directory older than the message. Who refuses: the broker (the revoked agent's own
connection is dropped), every consumer of the events (dead letters of kind `signature`,
"revoked"), the policy service (no fact from a revoked key), the event store (flags);
what did not move: the case, the gateway."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from contracts import ActionApproved, ActionDenied, ActionRequested, CaseClosed, CaseStepCompleted
from contracts.cards import AgentCard
from mesh.testing import eventually
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

BURST = 6


async def enrol_second_screener(mesh: Mesh) -> tuple[str, Any]:
    """A second agent the operator made an authority for `fraud_score`."""
    rogue_id = f"rogue-screener-{uuid.uuid4().hex[:8]}"
    rogue = await mesh.enrol(
        AgentCard(
            agent_id=rogue_id,
            name="Second fraud screener",
            version="1",
            owner="claims-team",
            purpose="scores the fraud risk of claims",
            produces=["case_step_completed"],
            facts=["fraud_score"],
        )
    )
    return rogue_id, rogue


async def test_events_signed_after_a_revocation_are_refused_by_every_consumer(
    mesh: Mesh,
) -> None:
    """An enrolled screener, authority for `fraud_score`, is revoked by an operator. At
    once a burst of screenings signed with its key arrives in a case that intake
    rejected (published over another agent's connection that may publish steps, as an
    attacker holding both would): had one been taken, adjudication would have asked to
    pay the rejected claim. Both consumers dead-letter every one as signed by a revoked
    agent, the store flags them all, and nothing follows."""
    rogue_id, rogue = await enrol_second_screener(mesh)
    assert rogue.identity is not None
    case_id = await mesh.open(lapsed(new_ref("revoked")))
    _, rejected = await mesh.wait_for_event(
        case_id, CaseStepCompleted, lambda e: e.payload.outcome == "rejected"
    )
    await mesh.wait_for_event(case_id, CaseClosed)
    burst = [screening(case_id, rejected, rogue_id) for _ in range(BURST)]
    subject = mesh.subjects.for_event(burst[0])
    messages = [signed(event, rogue.identity, subject) for event in burst]
    accomplice = await mesh.connect("claims-intake")
    mark = await mesh.dead_letter_mark()

    revoked = await mesh.stack.registry.change_status(
        "revoke", rogue_id, "key compromised", mesh.key("operator")
    )
    assert revoked.status == "revoked"
    await asyncio.gather(*(store(accomplice, subject, body, headers) for body, headers in messages))

    # The broker dropped the revoked agent's own connection (its credentials are gone).
    await eventually(
        lambda: not rogue.nc.is_connected, timeout=10, what="the revoked agent disconnected"
    )
    bodies = {body: event.event_id for (body, _), event in zip(messages, burst, strict=True)}
    letters = await mesh.wait_for_dead_letters(
        mark, lambda d: d.body in bodies, count=2 * BURST, timeout=45
    )
    assert {(bodies[d.body], d.consumer) for d in letters} == {
        (event.event_id, consumer)
        for event in burst
        for consumer in ("claims-fraud", "claims-adjudication")
    }
    for letter in letters:
        assert letter.kind == "signature"
        assert f"signed by revoked agent {rogue_id} after its revocation" in letter.reason

    timeline = {entry.event_id: entry for entry in await mesh.timeline(case_id)}
    for event in burst:
        assert not timeline[event.event_id].verified
        assert "revoked" in (timeline[event.event_id].problem or "")
    history = await mesh.history(case_id)
    assert not events(history, ActionRequested)
    assert not [
        e for _, e in events(history, CaseStepCompleted) if e.payload.step == "adjudication"
    ]
    view = await mesh.view(case_id)
    assert (view.status, view.outcome, view.flagged_events) == ("closed", "rejected", BURST)
    assert await mesh.case_payments(case_id) == []


async def test_the_policy_takes_no_fact_from_a_key_revoked_before_it_was_stored(
    mesh: Mesh,
) -> None:
    """Fraud screening scores a claim 100. A second screener, also an authority for
    `fraud_score`, is revoked; at once a screening signed with its key says 0, stored
    after the fraud agent's and before adjudication (held still meanwhile) asks to pay.
    Had the policy service judged it with a key directory older than the message, the
    later authoritative 0 would have counted and the claim been paid."""
    rogue_id, rogue = await enrol_second_screener(mesh)
    assert rogue.identity is not None
    accomplice = await mesh.connect("claims-intake")
    async with mesh.paused("adjudication"):
        case_id = await mesh.open(claim(new_ref("revokedfact"), description=FRAUDULENT))
        _, real = await mesh.wait_for_event(
            case_id, CaseStepCompleted, lambda e: e.payload.step == "fraud_screening"
        )
        late = screening(case_id, real, rogue_id)
        subject = mesh.subjects.for_event(late)
        message = signed(late, rogue.identity, subject)
        await mesh.stack.registry.change_status(
            "revoke", rogue_id, "key compromised", mesh.key("operator")
        )
        late_sequence = await store(accomplice, subject, *message)

    _, decided = await mesh.wait_for_event(case_id, ActionDenied)
    history = await mesh.history(case_id)
    assert all(s.sequence > late_sequence for s, _ in events(history, ActionRequested))
    [fact] = [f for f in decided.payload.provenance.facts if f.name == "fraud_score"]
    assert (fact.actor, fact.event_id, fact.value) == ("claims-fraud", real.event_id, 100)
    assert "forbidden by high-fraud-score" in decided.payload.reasons
    assert not events(history, ActionApproved)
    assert await mesh.case_payments(case_id) == []
