"""Human approvals, as pure logic: who may approve, and what a missed deadline means.

- Only a human whose card, in force when the approval was stored, holds the role the
  policy names may approve or reject.
- The requesting agent can never approve (or reject) its own request. The approval's
  signature is checked against the registry's keys before it gets here, so its actor
  is who signed it: nobody can act for the requester.
- Past the deadline a request escalates once to the policy's `@escalate_to` role with
  a fresh deadline; past that (or with nowhere to escalate) it expires.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec

from contracts.cards import AgentCard
from contracts.events.actions import DecisionProvenance


class PendingApproval(msgspec.Struct, frozen=True, kw_only=True):
    """A request waiting for a human (kept in a KV bucket so restarts keep it)."""

    request_id: str
    case_id: str
    correlation_id: str
    action_type: str
    requester: str
    approver_role: str
    requested_at: datetime
    deadline: datetime
    sla_seconds: float
    provenance: DecisionProvenance
    required_event_id: str  # the approval_required event
    escalate_to: str | None = None
    escalated: bool = False
    # waiting → decided (by an approval) or expired; the record goes once announced.
    state: Literal["waiting", "decided", "expired"] = "waiting"
    closed_by: str | None = None  # the approval event that decided it
    # The exact request a human is asked about: its digest (an approval must cite it)
    # and its parameters, read from those very bytes, for the approver to see.
    request_digest: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class ApprovalRefused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def check_approver(
    pending: PendingApproval | None,
    request_id: str,
    approver_id: str,
    approver: AgentCard | None,
    written_at: datetime,
    *,
    case_id: str | None = None,
    named_approver: str | None = None,
    request_digest: str | None = None,
) -> PendingApproval:
    """The pending approval this approver may decide, or ApprovalRefused saying why.
    `written_at` is when the approval entered the log: a grant written in time counts
    even if it is processed late."""
    if pending is None or pending.state != "waiting":
        state = "unknown" if pending is None else pending.state
        raise ApprovalRefused(f"no approval is pending for request {request_id} ({state})")
    if case_id is not None and case_id != pending.case_id:
        raise ApprovalRefused(
            f"request {request_id} belongs to case {pending.case_id}, not {case_id}"
        )
    if request_digest is not None and request_digest != pending.request_digest:
        raise ApprovalRefused(
            f"approves request bytes with digest {request_digest or '(none)'}, but the request "
            f"waiting is {pending.request_digest}: an approval binds the exact request"
        )
    if named_approver is not None and named_approver != approver_id:
        raise ApprovalRefused(f"signed by {approver_id} but names {named_approver} as approver")
    if approver_id == pending.requester:
        raise ApprovalRefused(
            f"{approver_id} requested {pending.action_type} itself and cannot decide it"
        )
    if approver is None:
        raise ApprovalRefused(f"{approver_id} held no card in force when it approved")
    if approver.kind != "human":
        raise ApprovalRefused(f"{approver_id} is a {approver.kind}; only a human approves")
    if pending.approver_role not in approver.roles:
        raise ApprovalRefused(
            f"deciding this needs the role {pending.approver_role!r}; "
            f"{approver_id} has {approver.roles}"
        )
    if written_at > pending.deadline:
        raise ApprovalRefused(f"the approval deadline {pending.deadline.isoformat()} had passed")
    return pending


TimeoutStep = Literal["escalate", "expire"]


def on_deadline(pending: PendingApproval, now: datetime) -> tuple[TimeoutStep, PendingApproval]:
    """What a missed deadline means: one escalation, then expiry."""
    if pending.escalate_to and not pending.escalated:
        return "escalate", msgspec.structs.replace(
            pending,
            approver_role=pending.escalate_to,
            deadline=now + timedelta(seconds=pending.sla_seconds),
            escalated=True,
        )
    return "expire", pending
