"""Who may decide a request policy put to a human, and what that decision must bind
(pure): the approval chain's rule, in the one place that every reader of it uses.

Where policy asks for a human (`approval_required`, naming a role; an escalation names
another), a human's decision — a grant or a rejection — counts for the request only if
- it cites the digest of the request's stored bytes (an approval binds the exact request);
- the approver it names is the principal who signed it (nobody decides in another's name);
- its signer is not the requester (nobody approves its own request);
- the card its signer held when the decision was stored was a human's, holding the role
  asked then.

Who reads it: the policy service, before it turns a human's decision into its own
(`services/policy/approvals.py`); the executor of a side effect, on the chain it acts
on (`authorization.require_authorization`), so a grant nobody may give moves no money
even if a decision cites it; and the offline audit, on every case of a bundle. Each
checks signatures and key validity itself before it asks this module.
"""

from __future__ import annotations

from collections.abc import Iterable

from contracts.cards import AgentCard
from contracts.envelope import Event
from contracts.events.actions import ApprovalEscalated, ApprovalRequired


def role_asked(answers: Iterable[Event], request_id: str) -> str | None:
    """The role policy put `request_id` to, as its (verified) answers, in log order,
    leave it: the `approval_required`'s role, or the latest escalation's. None: policy
    asked no human."""
    role = None
    for answer in answers:
        match answer:
            case ApprovalRequired(payload=asked) if asked.request_id == request_id:
                role = asked.approver_role
            case ApprovalEscalated(payload=escalated) if (
                escalated.request_id == request_id and escalated.escalated_to
            ):
                role = escalated.escalated_to
    return role


def approver_refusal(approver: str, card: AgentCard | None, role: str) -> str | None:
    """Why `approver`, holding `card` when its decision was stored, may not decide for
    `role`; None if it may (a human whose card holds the role)."""
    if card is None:
        return f"{approver} held no card in force when it approved"
    if card.kind != "human":
        return f"{approver} is a {card.kind}; only a human approves"
    if role not in card.roles:
        return f"deciding this needs the role {role!r}; {approver} has {card.roles}"
    return None


def human_decision_refusal(
    approver: str,
    card: AgentCard | None,
    *,
    named: str,
    cited_digest: str,
    request_digest: str,
    requester: str,
    action_type: str,
    role: str,
) -> str | None:
    """Why a human's decision signed by `approver` (holding `card` when it was stored,
    naming `named` as approver, citing `cited_digest`) cannot count for the request of
    `requester` whose stored bytes have `request_digest`, put to `role`; None if it
    counts."""
    if cited_digest != request_digest:
        return (
            f"approves request bytes with digest {cited_digest or '(none)'}, but the request "
            f"is {request_digest}: an approval binds the exact request"
        )
    if named != approver:
        return f"signed by {approver} but names {named} as approver"
    if approver == requester:
        return f"{approver} requested {action_type} itself and cannot decide it"
    return approver_refusal(approver, card, role)
