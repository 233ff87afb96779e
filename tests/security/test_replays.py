"""Any message may be replayed (issue 10, classes 7 and 9): an event id names one event
in the whole log, and a decision and an approval bind the exact bytes they judged.
Who refuses: the event store (flags the second message under an id), the audit
verifier (names it), the policy service (decides a request id once), the payment
agent (executes nothing when two events share the request's id); what did not move:
the gateway."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from contracts import (
    ActionApproved,
    ActionFailed,
    ActionRequested,
    ApprovalRequired,
    CaseClosed,
    CaseEscalated,
    CaseStepCompleted,
)
from mesh._trust.identity import message_digest
from tests.security.kit import FRAUDULENT, Mesh, claim, events, lapsed, new_ref, signed, store

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]


async def test_an_event_id_replayed_into_another_case_is_flagged_and_named(mesh: Mesh) -> None:
    """Intake re-signs its own accepted step of one case for another case it rejected —
    the same event id, a fresh Nats-Msg-Id. The fraud agent's reply in the second case
    is stored (its id is derived from the case too, so JetStream does not drop it as a
    duplicate of its reply in the first), the store flags the second message under the
    id, and the verifier names it."""
    first = await mesh.open(claim(new_ref("idsrc"), payee="DE89-30000003"))
    accepted_stored, accepted = await mesh.wait_for_event(
        first, CaseStepCompleted, lambda e: e.payload.outcome == "accepted"
    )
    _, first_screening = await mesh.wait_for_event(
        first, CaseStepCompleted, lambda e: e.payload.step == "fraud_screening"
    )
    second = await mesh.open(lapsed(new_ref("iddst"), description=FRAUDULENT))
    await mesh.wait_for_event(second, CaseClosed)

    replayed = msgspec.structs.replace(accepted, case_id=second)
    subject = mesh.subjects.for_event(replayed)
    body, headers = signed(replayed, mesh.key("claims-intake"), subject, msg_id=str(uuid.uuid4()))
    sequence = await store(await mesh.connect("claims-intake"), subject, body, headers)

    _, reply = await mesh.wait_for_event(
        second,
        CaseStepCompleted,
        lambda e: e.payload.step == "fraud_screening" and e.causation_id == accepted.event_id,
    )
    assert reply.actor == "claims-fraud"
    assert reply.event_id != first_screening.event_id
    # Both replies are in the log: neither case lost a step.
    assert [e.event_id for _, e in events(await mesh.history(first), CaseStepCompleted)].count(
        first_screening.event_id
    ) == 1

    [flagged] = [e for e in await mesh.timeline(second) if e.sequence == sequence]
    assert flagged.event_id == accepted.event_id
    assert flagged.duplicate_of == accepted_stored.sequence

    report = mesh.verify(await mesh.bundle(None))
    named = [str(v) for v in report.violations if f"sequence {sequence} " in v.where]
    assert any(
        f"a second message under event id {accepted.event_id} (first at sequence "
        f"{accepted_stored.sequence}, case {first})"
        in v
        and "a different event reusing the id" in v
        for v in named
    ), named
    case_report = mesh.verify(await mesh.bundle(second))
    assert any(
        "the store sealed it as a second message under its event id (first at sequence "
        f"{accepted_stored.sequence}" in str(v)
        for v in case_report.violations
    ), case_report.violations


async def test_approved_parameters_cannot_be_swapped(mesh: Mesh) -> None:
    """A large payout waits for a human. The adjudication agent re-publishes its request
    under the same event id (fresh Nats-Msg-Id) with the amount raised and the payee
    changed. The policy service does not decide the second event; the approver sees
    and approves the original (citing its digest); the payment agent finds two
    different events under the request's id and pays nothing; the verifier names it."""
    case_id = await mesh.open(claim(new_ref("swap"), amount=300_001, payee="DE89-20000002"))
    await mesh.wait_for_event(case_id, ApprovalRequired)
    [(request_stored, request)] = events(await mesh.history(case_id), ActionRequested)
    assert request.payload.parameters["amount"] == 290_001
    digest = message_digest(request_stored.subject, request_stored.body)
    mark = await mesh.dead_letter_mark()

    swapped = msgspec.structs.replace(
        request,
        payload=msgspec.structs.replace(
            request.payload,
            parameters={"amount": 4_900_000, "currency": "EUR", "payee_account": "XX-66666666"},
        ),
    )
    subject = mesh.subjects.for_event(swapped)
    body, headers = signed(
        swapped, mesh.key("claims-adjudication"), subject, msg_id=str(uuid.uuid4())
    )
    swap_sequence = await store(await mesh.connect("claims-adjudication"), subject, body, headers)
    [undecided] = await mesh.wait_for_dead_letters(
        mark, lambda d: d.body == body and d.consumer == "policy"
    )
    assert undecided.kind == "permanent"
    assert f"#{swap_sequence} is a second event under its id and is not decided" in (
        undecided.reason
    )

    dana = await mesh.human()
    [item] = [i for i in await mesh.pending(dana) if i["request_id"] == request.event_id]
    assert item["parameters"] == request.payload.parameters  # what the approver sees
    assert item["request_digest"] == digest
    # An approval of the swapped bytes is refused: it binds other bytes than those judged.
    swapped_digest = message_digest(subject, body)
    mark = await mesh.dead_letter_mark()
    wrong = await mesh.approve(dana, {**item, "request_digest": swapped_digest})
    [refused] = await mesh.wait_for_dead_letters(
        mark, lambda d: d.consumer == "policy" and wrong.event_id.encode() in d.body
    )
    assert f"approves request bytes with digest {swapped_digest}" in refused.reason
    assert "an approval binds the exact request" in refused.reason
    await mesh.approve(dana, item)

    _, failed = await mesh.wait_for_event(case_id, ActionFailed)
    assert "different events under this id" in failed.payload.error
    await mesh.wait_for_event(case_id, CaseEscalated)
    history = await mesh.history(case_id)
    [(_, approved)] = events(history, ActionApproved)
    assert approved.payload.request_digest == digest
    assert await mesh.case_payments(case_id) == []

    [flagged] = [e for e in await mesh.timeline(case_id) if e.sequence == swap_sequence]
    assert flagged.duplicate_of == request_stored.sequence
    report = mesh.verify(await mesh.bundle(case_id))
    assert any(
        f"a second message under event id {request.event_id} (first at sequence "
        f"{request_stored.sequence}, case {case_id}): a different event reusing the id" in str(v)
        for v in report.violations
    ), report.violations
