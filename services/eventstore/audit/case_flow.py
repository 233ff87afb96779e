"""A case's course (pure): it is opened before anything else happens in it and closed
once; nothing requested after its closing is approved (or put to a human); every
executed action had an approving decision before it; one obligation (an action type in
a case) is executed at most once."""

from __future__ import annotations

from contracts.events.actions import ActionApproved, ActionCompleted, ActionFailed, ApprovalRequired
from contracts.events.case import CaseClosed, CaseOpened
from services.eventstore.audit.case_state import CaseSoFar, Finding, RequestSeen
from services.eventstore.domain import LogRecord


def check_opened_first_closed_once(case: CaseSoFar, record: LogRecord, found: Finding) -> None:
    event = record.event
    if isinstance(event, CaseOpened):
        case.opened = case.opened or record
    elif case.opened is None:
        found(record, "comes before the case was opened: it squats the case id")
    if isinstance(event, CaseClosed):
        if case.closed is not None:
            found(record, f"closes the case again (closed at sequence {case.closed.sequence})")
        case.closed = case.closed or record


def check_not_after_closing(
    case: CaseSoFar,
    record: LogRecord,
    decision: ActionApproved | ApprovalRequired,
    request: RequestSeen,
    found: Finding,
) -> None:
    """A request stored after the case closed is denied by policy: approving it, or
    asking a human to, is a decision the log does not support."""
    closed = case.closed
    if closed is not None and closed.sequence < request.record.sequence:
        verb = "approves" if isinstance(decision, ActionApproved) else "asks a human to approve"
        found(
            record,
            f"{verb} request {request.event.event_id}, stored after the case was closed "
            f"(at sequence {closed.sequence}): nothing is done in a closed case",
        )


def check_execution(
    case: CaseSoFar, record: LogRecord, event: ActionCompleted | ActionFailed, found: Finding
) -> None:
    request_id = event.payload.request_id
    if request_id not in case.requests:
        found(record, f"executes unknown request {request_id}")
    elif request_id not in case.approved:
        found(record, f"executed request {request_id} without an approving decision before it")
    if isinstance(event, ActionCompleted):
        action_type = event.payload.action_type
        first = case.executed.setdefault(action_type, request_id)
        if first != request_id:
            found(
                record,
                f"executes {action_type} a second time in this case (request {request_id}; "
                f"request {first} executed it already): one obligation, one execution",
            )
