"""One claim, one payout (issue 10, class 10): side effects are idempotent per business
obligation, agents act once per case step rather than once per trigger, policy sees
what was already executed, and the verifier flags a second execution. Who refuses:
the agents downstream (they do not act again), the policy service (one payout per
claim), the payment agent and the gateway (one obligation, one payment); what did not
move: the gateway's ledger, the case's outcome.

Closed by the second half of issue 10 (6bac016); these fail against the first half
(0bad236) for the reasons they name."""

from __future__ import annotations

import pytest

from contracts import ActionRequested, CaseClosed, CaseStepCompleted
from tests.security.kit import Mesh, claim, events, new_ref, signed, store

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]


async def test_a_paid_claim_is_not_paid_again_however_often_a_step_fires(mesh: Mesh) -> None:
    """A small claim is paid. Then intake re-emits its own `intake: accepted` step three
    times (fresh event ids, its own key), as a compromised or buggy intake would."""
    case_id = await mesh.open(claim(new_ref("obligation"), payee="DE89-40000004"))
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    assert closed.payload.outcome == "paid"
    history = await mesh.history(case_id)
    [(_, accepted)] = [
        (s, e) for s, e in events(history, CaseStepCompleted) if e.payload.step == "intake"
    ]
    intake = await mesh.connect("claims-intake")
    for _ in range(3):
        again = CaseStepCompleted(
            case_id=case_id,
            correlation_id=accepted.correlation_id,
            causation_id=accepted.causation_id,
            actor="claims-intake",
            payload=accepted.payload,
        )
        subject = mesh.subjects.for_event(again)
        await store(intake, subject, *signed(again, mesh.key("claims-intake"), subject))
    await mesh.settled()

    [payment] = await mesh.case_payments(case_id)
    assert (payment["status"], payment["captures"]) == ("captured", 1)
    history = await mesh.history(case_id)
    screenings = [e for _, e in events(history, CaseStepCompleted) if e.actor == "claims-fraud"]
    assert len(screenings) == 1, "fraud screening ran again for the same claim"
    assert len(events(history, ActionRequested)) == 1, "adjudication asked to pay again"
    assert [e.payload.outcome for _, e in events(history, CaseClosed)] == ["paid"]
    report = mesh.verify(await mesh.bundle(case_id))
    assert report.ok, report.violations
