"""The projection, as pure functions: one log message in, the case's next state and its
timeline line out. The live projector, a rebuild and an auditor's replay all fold these
same functions over the same messages, which is why they agree.

Times in the views are the broker's (`stored_at`: when the message entered the log),
not the actors' clocks, so "the case as it stood at T" means "after every message the
log held at T".

Each message's timeline line is written by `services.eventstore.timeline`.

A flagged message — unreadable, failing its signature or key check, or a second copy
of an event id the case already has — is recorded in the timeline and counted, and
moves no state: an unverified claim must not close a case or approve a payment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import msgspec

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
    WaitEnded,
)
from contracts.eventstore_api import (
    FINISHED_ACTIONS,
    ActionStatus,
    ActionView,
    AgentActivity,
    CaseView,
)
from services.eventstore.merkle import CHAIN_START, chain_hash


@dataclass(frozen=True)
class LogRecord:
    """One message of the case log, read and checked."""

    sequence: int
    subject: str
    case_id: str
    stored_at: datetime
    headers: dict[str, str]
    body: bytes
    leaf: bytes  # RFC 9162 leaf hash of subject + "\n" + body
    event: Event | None  # None: the body is not a readable event
    signer: str | None
    problem: str | None  # why the message is flagged; None when it verified
    duplicate_of: int | None = None  # an earlier sequence with the same case and event id

    @property
    def counts(self) -> bool:
        """Does this message move state?"""
        return self.event is not None and self.problem is None and self.duplicate_of is None


@dataclass
class CaseState:
    view: CaseView
    actions: dict[str, ActionView] = field(default_factory=dict)

    @classmethod
    def empty(cls, case_id: str, at: datetime) -> CaseState:
        return cls(
            CaseView(
                case_id=case_id,
                kind=None,
                source=None,
                status="open",
                step=None,
                outcome=None,
                opened_at=None,
                updated_at=at,
                closed_at=None,
                event_count=0,
                last_sequence=0,
                open_actions=0,
                pending_approvals=0,
                flagged_events=0,
                chain_head=CHAIN_START.hex(),
            )
        )


def evolve(state: CaseState | None, record: LogRecord) -> CaseState:
    """The case after `record` (the state object is updated in place and returned)."""
    state = state or CaseState.empty(record.case_id, record.stored_at)
    view = state.view
    changes: dict[str, Any] = {
        "event_count": view.event_count + 1,
        "last_sequence": record.sequence,
        "updated_at": record.stored_at,
        "chain_head": chain_hash(bytes.fromhex(view.chain_head), record.leaf).hex(),
    }
    if not record.counts:
        changes["flagged_events"] = view.flagged_events + 1
    else:
        assert record.event is not None
        changes.update(_case_changes(view, record.event, record.stored_at))
        _apply_to_actions(state.actions, record.event, record.stored_at)
    open_actions = [a for a in state.actions.values() if a.status not in FINISHED_ACTIONS]
    changes["open_actions"] = len(open_actions)
    changes["pending_approvals"] = sum(1 for a in open_actions if a.status == "awaiting_approval")
    state.view = msgspec.structs.replace(view, **changes)
    return state


def _case_changes(view: CaseView, event: Event, at: datetime) -> dict[str, Any]:
    match event:
        case CaseOpened(payload=p):
            return {"kind": p.kind, "source": p.source, "opened_at": at}
        case CaseStepCompleted(payload=p):
            if view.status == "closed":
                return {}  # a step reported after the end (again?) does not reopen the outcome
            return {"step": p.step, "outcome": p.outcome}
        case CaseWaiting(payload=p):
            if view.status != "open":
                return {}  # an escalated or closed case does not go back to waiting
            return {"status": "waiting", "step": p.step, "outcome": f"waiting for {p.waiting_for}"}
        case WaitEnded(payload=p):
            if view.status != "waiting":
                return {}
            return {"status": "open", "outcome": f"{p.waiting_for}: {p.outcome}"}
        case CaseEscalated(payload=p):
            if view.status == "closed":
                return {}  # a closed case stays as it was closed
            return {"status": "escalated", "step": p.step, "outcome": f"escalated: {p.reason}"}
        case CaseClosed(payload=p):
            if view.status == "closed":
                return {}  # the first close stands: a later one rewrites nothing
            return {"status": "closed", "outcome": p.outcome, "closed_at": at}
    return {}


def _apply_to_actions(actions: dict[str, ActionView], event: Event, at: datetime) -> None:
    if isinstance(event, ActionRequested):
        actions[event.event_id] = ActionView(
            request_id=event.event_id,
            case_id=event.case_id or "",
            action_type=event.payload.action_type,
            requested_by=event.actor,
            status="requested",
            requested_at=at,
            updated_at=at,
            parameters=event.payload.parameters,
        )
        return
    request_id = getattr(event.payload, "request_id", None)  # type: ignore[attr-defined]
    action = actions.get(request_id) if isinstance(request_id, str) else None
    if action is None:
        return  # about a request this case never saw: the timeline shows it, state cannot
    status: ActionStatus = action.status
    changes: dict[str, Any] = {}
    match event:
        case ActionApproved(payload=p):
            status = "approved"
            changes = {"policy_bundle_hash": p.provenance.policy_bundle_hash}
            if p.approver:
                changes["approver"] = p.approver
        case ActionDenied(payload=p):
            status = "denied"
            changes = {"policy_bundle_hash": p.provenance.policy_bundle_hash}
            if p.approver:
                changes["approver"] = p.approver
        case ApprovalRequired(payload=p):
            status = "awaiting_approval"
            changes = {
                "policy_bundle_hash": p.provenance.policy_bundle_hash,
                "approver_role": p.approver_role,
                "deadline": p.deadline,
            }
        case ApprovalEscalated(payload=p):
            changes = {"approver_role": p.escalated_to, "deadline": p.new_deadline}
        case ApprovalExpired():
            status = "expired"
            changes = {"deadline": None}
        case ApprovalGranted(payload=p):
            changes = {"approver": p.approver}
        case ApprovalRejected(payload=p):
            status = "rejected"
            changes = {"approver": p.approver, "outcome": p.reason}
        case ActionCompleted(payload=p):
            status = "completed"
            changes = {"outcome": one_line(p.result)}
        case ActionFailed(payload=p):
            # A retryable failure is an attempt, not the end: the executor tries again.
            if not p.retryable:
                status = "failed"
            changes = {"outcome": f"attempt {p.attempts}: {p.error}"}
        case _:
            return
    actions[action.request_id] = msgspec.structs.replace(
        action, status=status, updated_at=at, **changes
    )


def one_line(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def count_activity(
    activity: dict[tuple[str, str], AgentActivity], record: LogRecord
) -> AgentActivity | None:
    """Per-agent activity after `record` (updated in place); None for an unreadable one."""
    if record.event is None:
        return None
    key = (record.event.actor, record.event.event_name())
    flagged = 0 if record.counts else 1
    current = activity.get(key)
    if current is None:
        current = AgentActivity(
            actor=key[0],
            event_type=key[1],
            events=1,
            flagged=flagged,
            first_at=record.stored_at,
            last_at=record.stored_at,
        )
    else:
        current = msgspec.structs.replace(
            current,
            events=current.events + 1,
            flagged=current.flagged + flagged,
            last_at=record.stored_at,
        )
    activity[key] = current
    return current


def mark_copy(first_copies: dict[str, int], record: LogRecord) -> LogRecord:
    """The first-verified-copy rule: one event id names one event in the whole log, and
    its first *verified* copy is the event; a later verified copy is marked
    `duplicate_of` it (and moves nothing). Only a verified copy can be the first: a
    forged message published ahead of the genuine one must not make the genuine one a
    duplicate. `first_copies` (event id → sequence of its first verified copy) is
    updated in place. The projector and the auditor's replay both mark copies here,
    which is why a rebuild reproduces the views exactly."""
    if record.event is None or record.problem is not None:
        return record
    first = first_copies.setdefault(record.event.event_id, record.sequence)
    return record if first == record.sequence else replace(record, duplicate_of=first)


def fold_case(records: Iterable[LogRecord]) -> CaseState | None:
    """A case's state from its messages alone, in log order: the auditor's replay. A
    second copy of an event id is marked as the projector marks it (a copy whose first
    is in another case is marked by the store, and carried in `duplicate_of`)."""
    state: CaseState | None = None
    first_copies: dict[str, int] = {}
    for record in records:
        state = evolve(state, mark_copy(first_copies, record))
    return state
