"""Nothing is done in a closed case (pure): the policy service finds the closing the
log held before a request, and the auditor flags any decision that approves (or puts to
a human) a request stored after the case closed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionRequested,
    ActionRequestedPayload,
    CaseClosed,
    CaseClosedPayload,
    CaseOpened,
    CaseOpenedPayload,
    DecisionProvenance,
)
from contracts.envelope import Event
from mesh.service import StoredEvent
from services.eventstore.audit.case_flow import (
    check_not_after_closing,
    check_opened_first_closed_once,
)
from services.eventstore.audit.case_state import CaseSoFar, RequestSeen
from services.eventstore.domain import LogRecord
from services.policy.domain import CaseClosure, human_grant_refusal
from services.policy.evidence import closure

T0 = datetime(2026, 11, 20, tzinfo=UTC)
CASE = "c-1"


def opened() -> CaseOpened:
    return CaseOpened(
        case_id=CASE,
        actor="ingress",
        payload=CaseOpenedPayload(kind="insurance_claim", source="crm", data={}),
    )


def closed(actor: str = "claims-intake", outcome: str = "rejected") -> CaseClosed:
    return CaseClosed(case_id=CASE, actor=actor, payload=CaseClosedPayload(outcome=outcome))


def requested() -> ActionRequested:
    return ActionRequested(
        case_id=CASE,
        actor="claims-adjudication",
        payload=ActionRequestedPayload(
            action_type="issue_payment",
            parameters={"amount": 32_001, "currency": "EUR", "payee_account": "DE89-1"},
        ),
    )


def stored(*events: Event) -> list[StoredEvent]:
    return [
        StoredEvent(
            sequence=n,
            subject=f"mesh.case.{CASE}.{event.event_name()}",
            body=b"",
            headers={},
            event=event,
            stored_at=T0 + timedelta(seconds=n),
        )
        for n, event in enumerate(events, start=1)
    ]


def records(*events: Event) -> list[LogRecord]:
    return [
        LogRecord(
            sequence=s.sequence,
            subject=s.subject,
            case_id=CASE,
            stored_at=s.stored_at,
            headers={},
            body=b"",
            leaf=b"",
            event=s.event,
            signer=s.event.actor,
            problem=None,
        )
        for s in stored(*events)
    ]


# ------------------------------------------------------------------ the policy service


def test_an_open_case_has_no_closing() -> None:
    assert closure(stored(opened())) is None
    assert closure([]) is None


def test_the_first_closing_before_the_request_counts() -> None:
    log = stored(opened(), closed(), closed("claims-adjudication", "denied"))
    assert closure(log) == CaseClosure(sequence=2, actor="claims-intake", outcome="rejected")


# ------------------------------------------------------------------ the auditor


def approval_of(request: ActionRequested) -> ActionApproved:
    return ActionApproved(
        case_id=CASE,
        actor="policy",
        payload=ActionDecisionPayload(
            request_id=request.event_id,
            action_type="issue_payment",
            provenance=DecisionProvenance(policy_bundle_hash="h"),
        ),
    )


def audit(*events: Event) -> list[str]:
    """The closed-case findings on a log, walked in order as the auditor does."""
    found: list[str] = []
    case = CaseSoFar()
    log = records(*events)
    for record in log:
        check_opened_first_closed_once(case, record, lambda _r, problem: found.append(problem))
        match record.event:
            case ActionRequested() as event:
                case.requests[event.event_id] = RequestSeen(record, event, "d")
            case ActionApproved() as event:
                request = case.requests[event.payload.request_id]
                check_not_after_closing(
                    case, record, event, request, lambda _r, problem: found.append(problem)
                )
    return found


def test_the_auditor_flags_an_approval_of_a_request_made_in_a_closed_case() -> None:
    request = requested()
    [problem] = audit(opened(), closed(), request, approval_of(request))
    assert f"approves request {request.event_id}, stored after the case was closed" in problem
    assert "(at sequence 2)" in problem


def test_an_approval_before_the_closing_is_not_flagged() -> None:
    request = requested()
    assert audit(opened(), request, approval_of(request), closed("claims-payment", "paid")) == []


def test_a_grant_in_a_case_closed_while_it_waited_approves_nothing() -> None:
    assert human_grant_refusal("c1", None) is None
    refusal = human_grant_refusal("c1", CaseClosure(sequence=7, actor="intake", outcome="rejected"))
    assert refusal is not None
    assert "c1 was closed (rejected) by intake at #7 while the request waited" in refusal
