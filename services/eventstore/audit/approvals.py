"""Human approvals in the log, by the approval chain's rule (mesh's `role_asked`,
`approver_refusal`: the same rule the policy service and the executor of a side effect
apply). A human's decision names its signer as approver, is not the requester's own,
and cites the exact request; where policy asked for a human, the approving decision
cites a grant of that request, earlier in the log, by a human whose card then held the
role asked."""

from __future__ import annotations

from contracts.events.actions import ActionApproved, ApprovalGranted, ApprovalRejected
from contracts.events.case import CaseOpened
from mesh.service import DecisionScope, KeyDirectory, acting_for, approver_refusal, role_asked
from services.eventstore.audit.case_state import CaseSoFar, Finding
from services.eventstore.domain import LogRecord


def check_human_decision(
    case: CaseSoFar, record: LogRecord, decision: ApprovalGranted | ApprovalRejected, found: Finding
) -> None:
    """A grant or a rejection, as it enters the log."""
    if decision.payload.approver != decision.actor:
        found(
            record,
            f"decides in the name of {decision.payload.approver}, signed by {decision.actor}",
        )
    if isinstance(decision, ApprovalGranted):
        case.grants[decision.event_id] = (record, decision)
    request = case.requests.get(decision.payload.request_id)
    if request is None:
        return
    if request.event.actor == decision.actor:
        found(record, f"{decision.actor} approves its own request (self-approval)")
    if decision.payload.request_digest != request.digest:
        found(
            record,
            f"approves request bytes with digest {decision.payload.request_digest or '(none)'}, "
            f"not the request stored at #{request.record.sequence} ({request.digest})",
        )


def check_human_approval(
    keys: KeyDirectory, case: CaseSoFar, record: LogRecord, decision: ActionApproved, found: Finding
) -> None:
    """Policy's approving decision, where policy had asked for a human."""
    request_id = decision.payload.request_id
    role = role_asked(case.asked, request_id)
    if role is None:
        return  # policy allowed it outright
    cited = case.grants.get(decision.payload.approval_id or "")
    if cited is None or cited[1].payload.request_id != request_id:
        found(
            record,
            f"approves request {request_id}, which needed a {role}'s approval, without "
            "citing a grant of it earlier in the log",
        )
        return
    grant_record, grant = cited
    if grant.payload.delegation_id is None and (
        decision.payload.acting_for or decision.payload.delegations
    ):
        found(
            record,
            f"says {grant.actor} acted for {decision.payload.acting_for} under "
            f"{decision.payload.delegations}, but its grant names no delegation",
        )
    if grant.payload.delegation_id is not None:
        _check_delegated(keys, case, record, decision, grant_record, grant, role, found)
    elif approver_refusal(grant.actor, keys.card_at(grant.actor, grant_record.stored_at), role):
        found(
            record,
            f"relies on {grant.actor}'s grant, but {grant.actor} was not a human {role} "
            "when it was given",
        )
    if grant.payload.request_digest != case.requests[request_id].digest:
        found(record, f"relies on {grant.actor}'s grant of other request bytes")


def _check_delegated(
    keys: KeyDirectory,
    case: CaseSoFar,
    record: LogRecord,
    decision: ActionApproved,
    grant_record: LogRecord,
    grant: ApprovalGranted,
    role: str,
    found: Finding,
) -> None:
    """A grant an agent gave for a person: the whole chain, as it stood when the grant
    was stored, and what the decision says of it."""
    assert grant.payload.delegation_id is not None
    request = case.requests[decision.payload.request_id].event
    opened = case.opened.event if case.opened is not None else None
    acting = acting_for(
        grant.actor,
        grant.payload.delegation_id,
        DecisionScope(
            role=role,
            action_type=request.payload.action_type,
            parameters=request.payload.parameters,
            case_kind=opened.payload.kind if isinstance(opened, CaseOpened) else None,
            requester=request.actor,
        ),
        grant_record.stored_at,
        keys,
    )
    if isinstance(acting, str):
        found(
            record,
            f"relies on {grant.actor}'s grant under a delegation that does not hold: {acting}",
        )
    elif (decision.payload.acting_for, decision.payload.delegations) != (
        acting.principal,
        acting.delegations,
    ):
        found(
            record,
            f"says {grant.actor} acted for {decision.payload.acting_for} under "
            f"{decision.payload.delegations}; the chain is {acting.principal} under "
            f"{acting.delegations}",
        )
