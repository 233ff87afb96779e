"""A case's course (pure): it is opened before anything else happens in it and closed
once; every executed action had an approving decision before it; one obligation (an
action type in a case) is executed at most once."""

from __future__ import annotations

from contracts.events.actions import ActionCompleted, ActionFailed
from contracts.events.case import CaseClosed, CaseOpened
from services.eventstore.audit.case_state import CaseSoFar, Finding
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
