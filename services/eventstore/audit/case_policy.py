"""The policy invariants, checked case by case on the verified messages (pure): each
message goes, in log order, to the checks of its family —
- `statements`: a step states only the facts its agent is the authority for;
- `decisions`: every decision answers a request of the case, cites its exact bytes and
  re-derives from the log;
- `approvals`: human decisions, and the grant an approval needed, by the approval
  chain's rule;
- `case_flow`: opened first, closed once, nothing approved that was requested after
  the closing; every execution approved before it; one obligation, one execution;
- `timers`: a timer fires once, when due, as its own agent set it, never once cancelled;
  a wait ends once, as its own agent began it, its deadline only by its timer's firing.

Messages that failed their signature, key or card check do not get here: they are
reported as such and count for nothing (a decision by anyone but a principal whose
card produces decisions is such a message). Nor do second copies under one event id.
"""

from __future__ import annotations

from collections import defaultdict

from contracts.events.actions import (
    ActionApproved,
    ActionCompleted,
    ActionDenied,
    ActionFailed,
    ActionRequested,
    ApprovalEscalated,
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequired,
)
from contracts.events.case import CaseStepCompleted, CaseWaiting, WaitEnded
from contracts.events.timers import TimerCancelled, TimerFired, TimerSet
from mesh.service import KeyDirectory, message_digest
from services.eventstore.audit.approvals import check_human_approval, check_human_decision
from services.eventstore.audit.case_flow import (
    check_execution,
    check_not_after_closing,
    check_opened_first_closed_once,
)
from services.eventstore.audit.case_state import CaseSoFar, Finding, RequestSeen
from services.eventstore.audit.decisions import check_decision
from services.eventstore.audit.report import Report, where
from services.eventstore.audit.statements import check_statement
from services.eventstore.audit.timers import Note, check_timer, check_wait
from services.eventstore.domain import LogRecord


def check_policy(
    records: list[LogRecord],
    keys: KeyDirectory,
    report: Report,
    *,
    compressed_clock_allowed: bool = False,
) -> None:
    by_case: dict[str, list[LogRecord]] = defaultdict(list)
    seen: set[str] = set()
    for record in records:
        if record.counts and record.event is not None and record.event.event_id not in seen:
            seen.add(record.event.event_id)
            by_case[record.case_id].append(record)

    def found(record: LogRecord, problem: str) -> None:
        report.add("policy", where(record), problem)

    def note(record: LogRecord, remark: str) -> None:
        report.notes.append(f"{where(record)}: {remark}")

    for case_records in by_case.values():
        check_case(case_records, keys, found, note, compressed_clock_allowed)


def _unnoted(record: LogRecord, remark: str) -> None:
    return None


def check_case(
    records: list[LogRecord],
    keys: KeyDirectory,
    found: Finding,
    note: Note = _unnoted,
    compressed_clock_allowed: bool = False,
) -> None:
    """`records`: one case's verified messages, first copies only, in log order."""
    case = CaseSoFar()
    for record in records:
        event = record.event
        check_opened_first_closed_once(case, record, found)
        match event:
            case CaseStepCompleted():
                check_statement(keys, record, event, found)
            case ActionRequested():
                digest = message_digest(record.subject, record.body)
                case.requests[event.event_id] = RequestSeen(record, event, digest)
            case ActionApproved() | ActionDenied() | ApprovalRequired():
                request = case.requests.get(event.payload.request_id)
                if request is None:
                    found(record, f"decides {event.payload.request_id}, no request here")
                    continue
                check_decision(keys, record, event, request, records, found)
                if isinstance(event, ActionApproved | ApprovalRequired):
                    check_not_after_closing(case, record, event, request, found)
                if isinstance(event, ApprovalRequired):
                    case.asked.append(event)
                elif isinstance(event, ActionApproved):
                    check_human_approval(keys, case, record, event, found)
                    case.approved.add(event.payload.request_id)
            case ApprovalEscalated():
                case.asked.append(event)
            case ApprovalGranted() | ApprovalRejected():
                check_human_decision(case, record, event, found)
            case ActionCompleted() | ActionFailed():
                check_execution(case, record, event, found)
            case TimerSet() | TimerCancelled() | TimerFired():
                check_timer(case, record, event, found, note, compressed_clock_allowed)
            case CaseWaiting() | WaitEnded():
                check_wait(case, record, event, found)
