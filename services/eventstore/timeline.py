"""The timeline, as a pure function: one log message in, its audit line out — who did
what, with which evidence and rationale, and what policy or which human decided. The
projector writes it, and a rebuild reproduces it, from the same messages. A flagged
message has its line too, marked unverified with its problem.
"""

from __future__ import annotations

from typing import Any

from contracts.envelope import Event
from contracts.events.actions import (
    ActionApproved,
    ActionCompleted,
    ActionDenied,
    ActionFailed,
    ActionRequested,
    ApprovalEscalated,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequired,
)
from contracts.events.case import (
    CaseClosed,
    CaseEscalated,
    CaseOpened,
    CaseStepCompleted,
    CaseWaiting,
    EvidenceReceived,
    WaitEnded,
)
from contracts.events.timers import TimerCancelled, TimerFired, TimerSet
from contracts.eventstore_api import TimelineEntry
from services.eventstore.domain import LogRecord, one_line


def timeline_entry(record: LogRecord) -> TimelineEntry:
    """The audit line: who did what, with which evidence and rationale, and what policy
    or which human decided."""
    event = record.event
    base: dict[str, Any] = {
        "sequence": record.sequence,
        "case_id": record.case_id,
        "stored_at": record.stored_at,
        "signer": record.signer,
        "verified": record.problem is None,
        "problem": record.problem,
        "duplicate_of": record.duplicate_of,
    }
    if event is None:
        return TimelineEntry(
            event_id=None,
            event_type=None,
            actor=None,
            occurred_at=None,
            summary=f"unreadable message on {record.subject}",
            **base,
        )
    base.update(
        event_id=event.event_id,
        event_type=event.event_name(),
        actor=event.actor,
        occurred_at=event.occurred_at,
    )
    return TimelineEntry(**base, **_describe(event))


def _describe(event: Event) -> dict[str, Any]:
    match event:
        case CaseOpened(payload=p):
            return {"summary": f"opened a {p.kind} case from {p.source}", "evidence": p.data}
        case CaseStepCompleted(payload=p):
            return {
                "summary": f"step {p.step}: {p.outcome}",
                "rationale": p.rationale or None,
                "evidence": p.evidence,
            }
        case CaseEscalated(payload=p):
            return {"summary": f"escalated at {p.step} to {p.to_role}", "rationale": p.reason}
        case CaseClosed(payload=p):
            return {"summary": f"closed: {p.outcome}", "rationale": p.summary or None}
        case ActionRequested(payload=p):
            return {
                "summary": f"requests {p.action_type} {one_line(p.parameters)}".rstrip(),
                "rationale": p.rationale or None,
                "evidence": p.evidence,
                "request_id": event.event_id,
            }
        case ActionApproved(payload=p) | ActionDenied(payload=p):
            verdict = "approved" if isinstance(event, ActionApproved) else "denied"
            by = f" after {p.approver}'s decision" if p.approver else ""
            if p.acting_for:
                by += f", acting for {p.acting_for} under delegation {' <- '.join(p.delegations)}"
            return {
                "summary": f"policy {verdict} {p.action_type}{by}",
                "rationale": "; ".join(p.reasons) or None,
                "evidence": p.provenance.inputs,
                "decision": verdict,
                "request_id": p.request_id,
                "approver": p.approver,
                "policy_bundle_hash": p.provenance.policy_bundle_hash,
                "determining_policies": [r.policy_id for r in p.provenance.determining_policies],
            }
        case ApprovalRequired(payload=p):
            return {
                "summary": f"{p.action_type} needs a {p.approver_role}'s approval "
                f"by {p.deadline.isoformat(timespec='seconds')}",
                "rationale": "; ".join(r.rationale for r in p.provenance.determining_policies)
                or None,
                "evidence": p.provenance.inputs,
                "decision": "approval_required",
                "request_id": p.request_id,
                "policy_bundle_hash": p.provenance.policy_bundle_hash,
                "determining_policies": [r.policy_id for r in p.provenance.determining_policies],
            }
        case ApprovalGranted(payload=p):
            under = f" under delegation {p.delegation_id}" if p.delegation_id else ""
            return {
                "summary": f"{p.approver} approved{under}",
                "rationale": p.comment or None,
                "decision": "granted",
                "request_id": p.request_id,
                "approver": p.approver,
            }
        case ApprovalRejected(payload=p):
            under = f" under delegation {p.delegation_id}" if p.delegation_id else ""
            return {
                "summary": f"{p.approver} rejected{under}",
                "rationale": p.reason,
                "decision": "rejected",
                "request_id": p.request_id,
                "approver": p.approver,
            }
        case ApprovalEscalated(payload=p) | ApprovalExpired(payload=p):
            verdict = "escalated" if isinstance(event, ApprovalEscalated) else "expired"
            to = f" to {p.escalated_to}" if p.escalated_to else ""
            return {
                "summary": f"approval of {p.action_type} {verdict}{to}",
                "rationale": p.reason,
                "decision": verdict,
                "request_id": p.request_id,
            }
        case ActionCompleted(payload=p):
            return {
                "summary": f"executed {p.action_type}",
                "evidence": p.result,
                "request_id": p.request_id,
            }
        case ActionFailed(payload=p):
            again = "will retry" if p.retryable else "gave up"
            return {
                "summary": f"{p.action_type} failed (attempt {p.attempts}, {again})",
                "rationale": p.error,
                "request_id": p.request_id,
            }
        case EvidenceReceived(payload=p):
            return {
                "summary": f"received {p.kind} {p.external_event_id} from {p.source}",
                "evidence": p.data,
            }
        case CaseWaiting(payload=p):
            return {
                "summary": f"{p.step} waits for {p.waiting_for}"
                + (f" from {p.requested_from}" if p.requested_from else "")
                + f" until {p.until.isoformat(timespec='seconds')}",
                "rationale": p.reason or None,
            }
        case WaitEnded(payload=p):
            ended = "arrived" if p.outcome == "arrived" else "did not come by the deadline"
            return {"summary": f"the wait for {p.waiting_for} ended: {ended}"}
        case TimerSet(payload=p):
            compressed = (
                f" (clock rate {p.clock_rate:g}: fires {p.due_at.isoformat(timespec='seconds')})"
                if p.clock_rate != 1
                else ""
            )
            return {
                "summary": f"set timer {p.name} for "
                f"{p.business_due_at.isoformat(timespec='seconds')}{compressed}",
                "evidence": p.data,
            }
        case TimerCancelled(payload=p):
            return {"summary": f"cancelled timer {p.timer_id}", "rationale": p.reason or None}
        case TimerFired(payload=p):
            return {
                "summary": f"timer {p.name} fired (due {p.due_at.isoformat(timespec='seconds')})",
                "evidence": p.data,
            }
    return {"summary": event.event_name()}
