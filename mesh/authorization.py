"""Before a side effect: prove from the case log that it was authorized.

The component that executes an action (a payment, say) calls `require_authorization`
with the request id. It passes only if the log holds, for that request:
- the `action_requested` itself;
- an `action_approved` answering it, signed by the policy service's key, and no
  `action_denied` from it (decisions signed by anyone else are ignored: they can
  neither authorize nor block);
- when the policy asked for a human (`approval_required`), the `approval_granted` the
  approval names, signed by a registered human's key valid when it was written, who is
  not the requester.
Anything else raises NotAuthorized with the reason, for the executor to record.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.client import JetStreamContext

from contracts.events.actions import (
    POLICY_PRINCIPAL,
    ActionApproved,
    ActionDenied,
    ActionRequested,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRequired,
)
from mesh.errors import MeshError, SignatureError
from mesh.identity import verify_headers
from mesh.key_directory import KeyDirectory
from mesh.reading import StoredEvent, read_case
from mesh.topology import Topology


class NotAuthorized(MeshError):
    """No valid approving chain for the request: the side effect must not run."""

    def __init__(self, request_id: str, reason: str) -> None:
        self.request_id = request_id
        self.reason = reason
        super().__init__(f"request {request_id} is not authorized: {reason}")


@dataclass(frozen=True)
class Authorization:
    request: ActionRequested
    decision: ActionApproved
    approval: ApprovalGranted | None


def signed_actor(stored: StoredEvent, keys: KeyDirectory) -> str:
    """The actor, once its signature and its key's validity at storage time check out."""
    signer = verify_headers(stored.subject, stored.body, stored.headers)
    keys.check(signer, stored.event.actor, stored.stored_at, stored.subject)
    return stored.event.actor


async def require_authorization(
    js: JetStreamContext,
    topology: Topology,
    keys: KeyDirectory,
    *,
    case_id: str,
    request_id: str,
    policy_principal: str = POLICY_PRINCIPAL,
) -> Authorization:
    history = await read_case(js, topology, case_id)
    by_id = {stored.event.event_id: stored for stored in history}
    request = by_id.get(request_id)
    if request is None or not isinstance(request.event, ActionRequested):
        raise NotAuthorized(request_id, "no such action_requested in the case")
    answers = [
        s
        for s in history
        if isinstance(s.event, ActionApproved | ActionDenied | ApprovalRequired | ApprovalExpired)
        and s.event.payload.request_id == request_id
    ]
    trusted = []
    ignored = []  # decisions anyone else wrote: they neither authorize nor block
    for stored in answers:
        try:
            actor = signed_actor(stored, keys)
        except SignatureError as exc:
            ignored.append(f"#{stored.sequence} fails verification ({exc.reason})")
            continue
        if actor != policy_principal:
            ignored.append(f"#{stored.sequence} {stored.event.event_name()} by {actor}")
            continue
        trusted.append(stored.event)
    untrusted = f"; ignored, not the policy service's: {', '.join(ignored)}" if ignored else ""
    denied = [e for e in trusted if isinstance(e, ActionDenied)]
    if denied:
        raise NotAuthorized(request_id, f"denied: {'; '.join(denied[0].payload.reasons)}")
    if any(isinstance(e, ApprovalExpired) for e in trusted):
        raise NotAuthorized(request_id, "the approval expired before anyone decided")
    approved = [e for e in trusted if isinstance(e, ActionApproved)]
    if not approved:
        raise NotAuthorized(request_id, f"no approving decision (yet){untrusted}")
    if len(approved) > 1:
        raise NotAuthorized(
            request_id, f"{len(approved)} approving decisions for one request: investigate"
        )
    decision = approved[0]
    needs_human = any(isinstance(e, ApprovalRequired) for e in trusted)
    if not needs_human:
        return Authorization(request.event, decision, None)
    approval = by_id.get(decision.payload.approval_id or "")
    if approval is None or not isinstance(approval.event, ApprovalGranted):
        raise NotAuthorized(request_id, "policy required a human approval; none is referenced")
    try:
        approver = signed_actor(approval, keys)
    except SignatureError as exc:
        raise NotAuthorized(request_id, f"the approval fails verification: {exc}") from None
    if approver == request.event.actor or approval.event.payload.request_id != request_id:
        raise NotAuthorized(request_id, f"approval by {approver} does not count for this request")
    return Authorization(request.event, decision, approval.event)
