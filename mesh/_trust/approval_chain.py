"""Who may decide a request policy put to a human, and what that decision must bind
(pure): the approval chain's rule, in the one place that every reader of it uses.

Where policy asks for a human (`approval_required`, naming a role; an escalation names
another), a human's decision — a grant or a rejection — counts for the request only if
- it cites the digest of the request's stored bytes (an approval binds the exact request);
- the approver it names is the principal who signed it (nobody decides in another's name);
- its signer is not the requester (nobody approves its own request);
- the card its signer held when the decision was stored was a human's, holding the role
  asked then — or the signer is an agent deciding for a person under a delegation
  (`contracts.delegation`) that was in force then, every link of its chain in force
  too, each link no wider than the one it came from, covering this role, action type,
  amount and kind of case, its root a human who held the role then and within that
  person's own limit; and neither the root nor any delegate in the chain requested it.

Who reads it: the policy service, before it turns a human's decision into its own
(`services/policy/approvals.py`); the executor of a side effect, on the chain it acts
on (`authorization.require_authorization`), so a grant nobody may give moves no money
even if a decision cites it; and the offline audit, on every case of a bundle. Each
checks signatures and key validity itself before it asks this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from contracts.cards import AgentCard
from contracts.delegation import DELEGATE_ROLE, Delegation, DelegationRecord
from contracts.envelope import Event
from contracts.events.actions import ApprovalEscalated, ApprovalRequired

# How far a delegation may be passed on: a person, and at most this many agents after.
MAX_DELEGATION_DEPTH = 4
# The request parameter a delegation's max_amount bounds.
AMOUNT = "amount"


class Delegations(Protocol):
    """What the chain's check reads: the registry's history (a key directory)."""

    def delegation(self, delegation_id: str) -> DelegationRecord | None: ...

    def card_at(self, actor: str, at: datetime) -> AgentCard | None: ...

    def in_good_standing(self, actor: str, at: datetime) -> bool: ...


@dataclass(frozen=True)
class DecisionScope:
    """What an approval under delegation would decide."""

    role: str  # the role policy asked
    action_type: str
    parameters: dict[str, Any]  # of the exact request (its `amount` is bounded)
    case_kind: str | None  # the case's kind, from its opening
    requester: str


@dataclass(frozen=True)
class ActingFor:
    """Whom an agent decided for: the person at the root, and the delegations from the
    agent's own up to the person's."""

    principal: str
    delegations: list[str]


def is_delegate(card: AgentCard | None) -> bool:
    """May the holder of `card` receive a delegation and decide under it: an agent
    whose card holds the role DELEGATE_ROLE (an operator's approval put it there)."""
    return card is not None and card.kind == "agent" and DELEGATE_ROLE in card.roles


def own_limit(card: AgentCard, action_type: str) -> int | None:
    """The most a person may approve of `action_type`: the `max_amount` their card's
    grant for it names; None when the card names no limit (the role decides alone)."""
    for grant in card.actions:
        if grant.action_type == action_type and "max_amount" in grant.limits:
            return int(grant.limits["max_amount"])
    return None


def widening(child: Delegation, parent: Delegation) -> list[str]:
    """How `child` (passed on by `parent`'s delegate) would give more than `parent` holds."""
    problems = []
    if child.delegator != parent.delegate:
        problems.append(f"it is {parent.delegate}'s to pass on, not {child.delegator}'s")
    if not parent.may_delegate:
        problems.append(f"{parent.delegation_id} may not be passed on")
    if child.role != parent.role:
        problems.append(f"role {child.role!r} is not {parent.role!r}")
    if extra := sorted(set(child.action_types) - set(parent.action_types)):
        problems.append(f"action types {extra} beyond {parent.action_types}")
    if child.max_amount > parent.max_amount:
        problems.append(f"max_amount {child.max_amount} above {parent.max_amount}")
    if extra := sorted(set(child.case_kinds) - set(parent.case_kinds)):
        problems.append(f"case kinds {extra} beyond {parent.case_kinds}")
    if child.valid_from < parent.valid_from or child.valid_until > parent.valid_until:
        problems.append("a validity beyond the parent's")
    return problems


def root_problems(delegation: Delegation, card: AgentCard | None) -> list[str]:
    """How the person at a chain's root (holding `card`) could not give `delegation`."""
    who = delegation.delegator
    refusal = approver_refusal(who, card, delegation.role)
    if refusal is not None:
        return [refusal]
    assert card is not None
    problems = []
    for action_type in delegation.action_types:
        limit = own_limit(card, action_type)
        if limit is not None and delegation.max_amount > limit:
            problems.append(
                f"max_amount {delegation.max_amount} of {action_type} above {who}'s own "
                f"limit {limit}"
            )
    return problems


def acting_for(
    approver: str,
    delegation_id: str,
    scope: DecisionScope,
    at: datetime,
    registry: Delegations,
) -> ActingFor | str:
    """Whom `approver` decided for under `delegation_id`, as the chain stood at `at`
    (when the decision was stored); or why the decision does not count."""
    chain: list[str] = []
    record = registry.delegation(delegation_id)
    expected_delegate = approver
    if not is_delegate(registry.card_at(approver, at)):
        return f"{approver} was no agent with the role {DELEGATE_ROLE!r} when it decided"
    while True:
        if record is None:
            return f"delegation {delegation_id} is not in the registry's history"
        d = record.delegation
        if d.delegation_id in chain:
            return f"delegation {d.delegation_id} passes itself on"
        chain.append(d.delegation_id)
        if len(chain) > MAX_DELEGATION_DEPTH:
            return f"delegation chain longer than {MAX_DELEGATION_DEPTH}"
        if d.delegate != expected_delegate:
            return f"delegation {d.delegation_id} is {d.delegate}'s, not {expected_delegate}'s"
        if not record.in_force(at):
            state = "revoked" if record.revoked_at and record.revoked_at <= at else "not valid"
            return f"delegation {d.delegation_id} was {state} at {at.isoformat()}"
        if problems := _scope_problems(d, scope):
            return f"delegation {d.delegation_id} does not cover it: " + "; ".join(problems)
        if scope.requester in (d.delegator, d.delegate):
            return f"{scope.requester} requested {scope.action_type} itself and cannot decide it"
        # Every link's principals in force then: a suspended person's authority, or a
        # revoked agent's, is passed on by nobody.
        for who in (d.delegator, d.delegate):
            if not registry.in_good_standing(who, at):
                return f"{who} was suspended, revoked or without a card at {at.isoformat()}"
        if d.parent is None:
            if problems := root_problems(d, registry.card_at(d.delegator, at)):
                return f"delegation {d.delegation_id}: " + "; ".join(problems)
            return ActingFor(d.delegator, chain)
        parent = registry.delegation(d.parent)
        if parent is not None and (problems := widening(d, parent.delegation)):
            return f"delegation {d.delegation_id} gives more than {d.parent}: " + "; ".join(
                problems
            )
        expected_delegate, record, delegation_id = d.delegator, parent, d.parent


def _scope_problems(d: Delegation, scope: DecisionScope) -> list[str]:
    problems = []
    if d.role != scope.role:
        problems.append(f"it is for the role {d.role!r}; policy asked {scope.role!r}")
    if scope.action_type not in d.action_types:
        problems.append(f"{scope.action_type} is not among {d.action_types}")
    amount = scope.parameters.get(AMOUNT)
    if not isinstance(amount, int) or isinstance(amount, bool):
        problems.append("the request names no amount to bound")
    elif amount > d.max_amount:
        problems.append(f"amount {amount} above its max_amount {d.max_amount}")
    if scope.case_kind not in d.case_kinds:
        problems.append(f"a {scope.case_kind} case is not among {d.case_kinds}")
    return problems


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
    delegated: ActingFor | str | None = None,
) -> str | None:
    """Why a human's decision signed by `approver` (holding `card` when it was stored,
    naming `named` as approver, citing `cited_digest`) cannot count for the request of
    `requester` whose stored bytes have `request_digest`, put to `role`; None if it
    counts. A decision under a delegation passes `delegated`: what `acting_for` found."""
    if cited_digest != request_digest:
        return (
            f"approves request bytes with digest {cited_digest or '(none)'}, but the request "
            f"is {request_digest}: an approval binds the exact request"
        )
    if named != approver:
        return f"signed by {approver} but names {named} as approver"
    if approver == requester:
        return f"{approver} requested {action_type} itself and cannot decide it"
    if delegated is not None:
        return delegated if isinstance(delegated, str) else None
    return approver_refusal(approver, card, role)
