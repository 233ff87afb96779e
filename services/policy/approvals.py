"""Human approvals, as pure logic: who may approve, and what a missed deadline means.

- Only a registered human holding the role the policy names may approve or reject.
- The requesting agent can never approve (or reject) its own request. The approval's
  signature is checked against the registry's keys before it gets here, so its actor
  is who signed it: nobody can act for the requester.
- Past the deadline a request escalates once to the policy's `@escalate_to` role with
  a fresh deadline; past that (or with nowhere to escalate) it expires.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import msgspec

from contracts.cards import AgentRecord
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


class ApprovalRefused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def check_approver(
    pending: PendingApproval | None,
    request_id: str,
    approver_id: str,
    approver: AgentRecord | None,
    now: datetime,
) -> PendingApproval:
    """The pending approval this approver may decide, or ApprovalRefused saying why."""
    if pending is None:
        raise ApprovalRefused(
            f"no approval is pending for request {request_id} (unknown, decided or expired)"
        )
    if approver_id == pending.requester:
        raise ApprovalRefused(
            f"{approver_id} requested {pending.action_type} itself and cannot decide it"
        )
    if approver is None:
        raise ApprovalRefused(f"{approver_id} is not registered")
    if approver.status != "active":
        raise ApprovalRefused(f"{approver_id} is {approver.status}")
    if approver.card.kind != "human":
        raise ApprovalRefused(f"{approver_id} is a {approver.card.kind}; only a human approves")
    if pending.approver_role not in approver.card.roles:
        raise ApprovalRefused(
            f"deciding this needs the role {pending.approver_role!r}; "
            f"{approver_id} has {approver.card.roles}"
        )
    if now > pending.deadline:
        raise ApprovalRefused(f"the approval deadline {pending.deadline.isoformat()} has passed")
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
