"""Human approvals, as pure logic: who may approve, and what a missed deadline means.

- Only a human whose card, in force when the approval was stored, holds the role the
  policy names may approve or reject.
- The requesting agent can never approve (or reject) its own request. The approval's
  signature is checked against the registry's keys before it gets here, so its actor
  is who signed it: nobody can act for the requester.
  Both are the approval chain's rule (`mesh.service.human_decision_refusal`): the
  executor of the action and the auditor apply the very same one.
- Past the deadline a request escalates once to the policy's `@escalate_to` role with
  a fresh deadline; past that (or with nowhere to escalate) it expires.
- What waits is shown to the approvers who may decide it and to its requester (an
  operator sees everything).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec

from contracts.cards import AgentCard
from contracts.events.actions import ApprovalTimedOutPayload, DecisionProvenance
from mesh.service import ActingFor, DecisionScope, Refused, human_decision_refusal


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
    deadline_timer: str = ""  # the timer set for the deadline, cancelled by a decision
    case_kind: str | None = None  # from the case's opening: what a delegation may cover


class ApprovalRefused(Refused):
    """An approval that cannot count: not from an approver in force, not for a request
    that waits, or after its deadline."""


def decision_scope(pending: PendingApproval) -> DecisionScope:
    """What an approval of `pending` under a delegation decides (what it must cover)."""
    return DecisionScope(
        role=pending.approver_role,
        action_type=pending.action_type,
        parameters=pending.parameters,
        case_kind=pending.case_kind,
        requester=pending.requester,
    )


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
    delegated: ActingFor | str | None = None,
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
    refusal = human_decision_refusal(
        approver_id,
        approver,
        named=approver_id if named_approver is None else named_approver,
        cited_digest=pending.request_digest if request_digest is None else request_digest,
        request_digest=pending.request_digest,
        requester=pending.requester,
        action_type=pending.action_type,
        role=pending.approver_role,
        delegated=delegated,
    )
    if refusal is not None:
        raise ApprovalRefused(refusal)
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


def timed_out(
    pending: PendingApproval, step: TimeoutStep, updated: PendingApproval
) -> ApprovalTimedOutPayload:
    """What the log is told of a missed deadline (`updated`: the record after the step)."""
    return ApprovalTimedOutPayload(
        request_id=pending.request_id,
        action_type=pending.action_type,
        waited_since=pending.requested_at,
        reason=f"no {pending.approver_role} decided by {pending.deadline.isoformat()}",
        escalated_to=updated.approver_role if step == "escalate" else None,
        new_deadline=updated.deadline if step == "escalate" else None,
    )


def visible_to(
    principal: str, card: AgentCard | None, pending: list[PendingApproval]
) -> list[PendingApproval]:
    """What waits that `principal` (holding `card` now) may see: an operator everything,
    a requester its own requests, a human approver what its roles may decide."""
    roles = set(card.roles) if card is not None else set()
    if "operator" in roles:
        return pending
    human = card is not None and card.kind == "human"
    return [p for p in pending if p.requester == principal or (human and p.approver_role in roles)]
