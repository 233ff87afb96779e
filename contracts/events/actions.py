"""Actions: an agent asks to do something consequential; policy (and maybe a human)
decides; the executor reports what happened. `request_id` is always the event_id of
the `action_requested` event. A decision and a human's approval also cite the
`request_digest`: the sha256 of the request's stored subject and bytes
(mesh._trust.identity.message_digest), so they bind to the exact request they judged — a
second, different event under the same id is never what was approved."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from contracts.envelope import Event


class ActionRequestedPayload(msgspec.Struct, frozen=True, kw_only=True):
    action_type: str  # e.g. "issue_payment"
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    rationale: str = ""
    evidence: dict[str, Any] = msgspec.field(default_factory=dict)


class ActionRequested(Event, frozen=True, kw_only=True, tag="action_requested"):
    payload: ActionRequestedPayload


class PolicyReference(msgspec.Struct, frozen=True, kw_only=True):
    policy_id: str
    rationale: str = ""


class FactSource(msgspec.Struct, frozen=True, kw_only=True):
    """Where a case fact a decision used came from: the event that stated it, by an
    agent whose card (in force when that event was stored) made it the authority."""

    name: str
    value: Any
    event_id: str
    actor: str
    sequence: int


class DecisionProvenance(msgspec.Struct, frozen=True, kw_only=True):
    """What an auditor needs to re-check a decision: the bundle, the rules, the inputs,
    and where each case fact came from."""

    policy_bundle_hash: str
    determining_policies: list[PolicyReference] = msgspec.field(default_factory=list)
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    # The case facts the policy looked for (its schema's case attributes), and the
    # authoritative statement of each one found in the log before the request.
    facts_considered: list[str] = msgspec.field(default_factory=list)
    facts: list[FactSource] = msgspec.field(default_factory=list)


class ActionDecisionPayload(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    action_type: str
    provenance: DecisionProvenance
    reasons: list[str] = msgspec.field(default_factory=list)
    # When a human decided: the approval_granted / approval_rejected event it answers.
    approval_id: str | None = None
    approver: str | None = None
    request_digest: str = ""  # the exact request decided on
    # A decision by an agent acting for a person: whom it acted for, under which
    # delegation chain (the delegate's own first, its root last).
    acting_for: str | None = None
    delegations: list[str] = msgspec.field(default_factory=list)


class ActionApproved(Event, frozen=True, kw_only=True, tag="action_approved"):
    payload: ActionDecisionPayload


class ActionDenied(Event, frozen=True, kw_only=True, tag="action_denied"):
    payload: ActionDecisionPayload


class ApprovalRequiredPayload(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    action_type: str
    provenance: DecisionProvenance
    approver_role: str
    deadline: datetime
    request_digest: str = ""  # the exact request a human is asked about


class ApprovalRequired(Event, frozen=True, kw_only=True, tag="approval_required"):
    payload: ApprovalRequiredPayload


class ApprovalGrantedPayload(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    approver: str
    comment: str = ""
    request_digest: str = ""  # the exact request the human read and approved
    # An agent deciding for a person: the delegation it acts under (contracts.delegation).
    delegation_id: str | None = None


class ApprovalGranted(Event, frozen=True, kw_only=True, tag="approval_granted"):
    payload: ApprovalGrantedPayload


class ApprovalRejectedPayload(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    approver: str
    reason: str
    request_digest: str = ""
    delegation_id: str | None = None  # as for a grant


class ApprovalRejected(Event, frozen=True, kw_only=True, tag="approval_rejected"):
    payload: ApprovalRejectedPayload


class ActionCompletedPayload(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    action_type: str
    result: dict[str, Any] = msgspec.field(default_factory=dict)


class ActionCompleted(Event, frozen=True, kw_only=True, tag="action_completed"):
    payload: ActionCompletedPayload


class ActionFailedPayload(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    action_type: str
    error: str
    retryable: bool
    attempts: int = 1


class ActionFailed(Event, frozen=True, kw_only=True, tag="action_failed"):
    payload: ActionFailedPayload


class ApprovalTimedOutPayload(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    action_type: str
    waited_since: datetime
    reason: str
    escalated_to: str | None = None  # the role now asked (escalation), None when expired
    new_deadline: datetime | None = None


class ApprovalEscalated(Event, frozen=True, kw_only=True, tag="approval_escalated"):
    """Nobody approved in time: the request now waits for a higher role."""

    payload: ApprovalTimedOutPayload


class ApprovalExpired(Event, frozen=True, kw_only=True, tag="approval_expired"):
    """Nobody approved in time, and there is no one left to ask: the action is not taken."""

    payload: ApprovalTimedOutPayload
