"""Before a side effect: prove from the case log that it was authorized.

The component that executes an action (a payment, say) calls `require_authorization`
with the request id. It passes only if the log holds, for that request:
- exactly one request under that id (two different events under one id prove nothing:
  which one was judged?), signed by its actor with a key and a card valid when stored;
- an `action_approved` answering it that cites the request's digest (the sha256 of its
  stored bytes), signed by a principal whose card produces decisions — the policy
  service — and no such `action_denied` or `approval_expired` (decisions anyone else
  wrote can neither authorize nor block);
- when the policy asked for a human (`approval_required`), the `approval_granted` the
  approval names, for this request, signed by a principal whose card in force then
  produces approvals, and counting by the approval chain's rule (`approval_chain`): it
  cites the same digest, and its signer is not the requester but a human holding the
  role asked (a grant nobody may give moves no money, even if a decision cites it).
Anything else raises NotAuthorized with the reason, for the executor to record. What
the executor then runs is `Authorization.request`: byte for byte what was approved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.events.actions import (
    ActionApproved,
    ActionDenied,
    ActionRequested,
    ApprovalEscalated,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRequired,
)
from contracts.events.case import CaseOpened
from mesh._broker.stored_messages import StoredEvent
from mesh._trust.approval_chain import (
    DecisionScope,
    acting_for,
    human_decision_refusal,
    role_asked,
)
from mesh._trust.identity import message_digest, verify_headers
from mesh._trust.key_directory import KeyDirectory
from mesh.errors import NotAuthorized, SignatureError


@dataclass(frozen=True)
class Authorization:
    request: ActionRequested
    request_digest: str
    decision: ActionApproved
    approval: ApprovalGranted | None
    # The case's verified events as read for the proof (for the executor's own checks).
    history: list[StoredEvent] = field(default_factory=list)


def signed_actor(stored: StoredEvent, keys: KeyDirectory) -> str:
    """The actor, once its signature, its key's validity at storage time and its card's
    right to produce this type of event check out."""
    signer = verify_headers(stored.subject, stored.body, stored.headers)
    keys.check(
        signer, stored.event.actor, stored.stored_at, stored.subject, stored.event.event_name()
    )
    return stored.event.actor


async def require_authorization(
    history: list[StoredEvent], keys: KeyDirectory, *, request_id: str
) -> Authorization:
    """`history` is the case's log, read after the approval arrived."""
    if history:
        await keys.ensure_current(max(stored.stored_at for stored in history))
    copies = [stored for stored in history if stored.event.event_id == request_id]
    request = next((s for s in copies if isinstance(s.event, ActionRequested)), None)
    if request is None or not isinstance(request.event, ActionRequested):
        raise NotAuthorized(request_id, "no such action_requested in the case")
    digests = {message_digest(s.subject, s.body) for s in copies}
    if len(digests) > 1:
        sequences = ", ".join(f"#{s.sequence}" for s in copies)
        raise NotAuthorized(
            request_id,
            f"the log holds {len(digests)} different events under this id ({sequences}): "
            "which one was judged cannot be told, so none is executed",
        )
    try:
        signed_actor(request, keys)
    except SignatureError as exc:
        raise NotAuthorized(request_id, f"the request fails verification: {exc.reason}") from None
    digest = digests.pop()
    answers = [
        s
        for s in history
        if isinstance(
            s.event,
            ActionApproved | ActionDenied | ApprovalRequired | ApprovalEscalated | ApprovalExpired,
        )
        and s.event.payload.request_id == request_id
    ]
    trusted = []
    ignored = []  # decisions that do not count: they neither authorize nor block
    for stored in answers:
        try:
            signed_actor(stored, keys)
        except SignatureError as exc:
            ignored.append(f"#{stored.sequence} fails verification ({exc.reason})")
            continue
        if isinstance(stored.event, ActionApproved | ActionDenied | ApprovalRequired) and (
            stored.event.payload.request_digest != digest
        ):
            ignored.append(f"#{stored.sequence} judged other bytes than the request's")
            continue
        trusted.append(stored.event)
    untrusted = f"; ignored: {', '.join(ignored)}" if ignored else ""
    denied = [e for e in trusted if isinstance(e, ActionDenied)]
    if denied:
        raise NotAuthorized(request_id, f"denied: {'; '.join(denied[0].payload.reasons)}")
    if any(isinstance(e, ApprovalExpired) for e in trusted):
        raise NotAuthorized(request_id, "the approval expired before anyone decided")
    approved = [e for e in trusted if isinstance(e, ActionApproved)]
    if not approved:
        raise NotAuthorized(request_id, f"no approving decision (yet){untrusted}")
    if len({e.event_id for e in approved}) > 1:
        raise NotAuthorized(
            request_id, f"{len(approved)} approving decisions for one request: investigate"
        )
    decision = approved[0]
    role = role_asked(trusted, request_id)
    if role is None:
        return Authorization(request.event, digest, decision, None)
    grant = _human_grant(history, keys, request.event, digest, decision, role)
    return Authorization(request.event, digest, decision, grant)


def _human_grant(
    history: list[StoredEvent],
    keys: KeyDirectory,
    request: ActionRequested,
    digest: str,
    decision: ActionApproved,
    role: str,
) -> ApprovalGranted:
    """The grant `decision` cites, once it verifies and counts for `request` (whose
    stored bytes have `digest`) by the approval chain's rule; else NotAuthorized."""
    request_id = request.event_id
    grants = [
        s
        for s in history
        if s.event.event_id == (decision.payload.approval_id or "")
        and isinstance(s.event, ApprovalGranted)
    ]
    if len(grants) != 1:
        raise NotAuthorized(request_id, "policy required a human approval; none is referenced")
    approval = grants[0]
    assert isinstance(approval.event, ApprovalGranted)
    try:
        approver = signed_actor(approval, keys)
    except SignatureError as exc:
        raise NotAuthorized(request_id, f"the approval fails verification: {exc}") from None
    if approval.event.payload.request_id != request_id:
        raise NotAuthorized(request_id, f"approval by {approver} does not count for this request")
    delegation_id = approval.event.payload.delegation_id
    delegated = (
        acting_for(
            approver,
            delegation_id,
            DecisionScope(
                role=role,
                action_type=request.payload.action_type,
                parameters=request.payload.parameters,
                case_kind=_case_kind(history),
                requester=request.actor,
            ),
            approval.stored_at,
            keys,
        )
        if delegation_id is not None
        else None
    )
    refusal = human_decision_refusal(
        approver,
        keys.card_at(approver, approval.stored_at),
        named=approval.event.payload.approver,
        cited_digest=approval.event.payload.request_digest,
        request_digest=digest,
        requester=request.actor,
        action_type=request.payload.action_type,
        role=role,
        delegated=delegated,
    )
    if refusal is not None:
        raise NotAuthorized(request_id, f"approval by {approver} does not count: {refusal}")
    return approval.event


def _case_kind(history: list[StoredEvent]) -> str | None:
    """The case's kind, from its first verified-by-the-caller opening."""
    return next((s.event.payload.kind for s in history if isinstance(s.event, CaseOpened)), None)
