"""Delegations, as pure logic: what the registry records when a person hands an agent
part of their authority, and when it is revoked (`contracts.delegation`).

A delegation is recorded only if
- its signer holds a current key of the delegator, who is an active principal;
- its id is new (the same signed delegation again changes nothing);
- it begins before it ends, ends in the future and lasts at most MAX_DELEGATION;
- its delegate is another active agent whose card lets it sign approvals (a card that
  produces approval_granted, which only an operator's approval of the role "delegate"
  puts in force);
- it gives no more than the delegator holds: a person must hold the role, as a human
  approver, and delegate no more than their own limit; an agent passing a delegation
  on must hold that parent (in force, `may_delegate`), and give no wider role, action
  types, amount, kinds of case or validity (the rule: `mesh.service.widening`).
A revocation is the delegator's, someone's up its chain, or an operator's; it takes
effect when stored, for the delegation and everything passed on from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from contracts.cards import SignedStatement
from contracts.delegation import Delegation, DelegationRevocation
from contracts.envelope import Event
from contracts.events.registry import (
    DelegationGranted,
    DelegationGrantedPayload,
    DelegationRevoked,
    DelegationRevokedPayload,
)
from mesh.service import (
    MAX_DELEGATION_DEPTH,
    Refused,
    is_delegate,
    root_problems,
    widening,
)
from services.registry.state import RegistryState

MAX_DELEGATION = timedelta(days=366)
SIGNS_APPROVALS = "approval_granted"


def decide_delegation(
    state: RegistryState,
    delegation: Delegation,
    statement: SignedStatement,
    now: datetime,
    registry_id: str,
) -> list[Event]:
    d = delegation
    held = state.delegations.get(d.delegation_id)
    if held is not None:
        if held.statement.body == statement.body:
            return []  # asked again: it is recorded already
        raise Refused(f"delegation id {d.delegation_id} is taken")
    delegator = state.records.get(d.delegator)
    if delegator is None or delegator.status != "active":
        raise Refused(f"the delegator {d.delegator} is not an active principal")
    if statement.signer not in state.current_keys(d.delegator):
        raise Refused(f"signed by {statement.signer}, not a current key of {d.delegator}")
    if not d.valid_from < d.valid_until or d.valid_until <= now:
        raise Refused("a delegation must begin before it ends, and end in the future")
    if d.valid_until - d.valid_from > MAX_DELEGATION:
        raise Refused(f"a delegation lasts at most {MAX_DELEGATION.days} days")
    delegate = state.records.get(d.delegate)
    if d.delegate == d.delegator or delegate is None or delegate.status != "active":
        raise Refused(f"the delegate {d.delegate} is not another active agent")
    if not is_delegate(delegate.card) or SIGNS_APPROVALS not in delegate.card.produces:
        raise Refused(
            f"{d.delegate} is no delegate: an operator must approve an agent's card with the "
            f"role 'delegate' that produces {SIGNS_APPROVALS}"
        )
    if d.parent is None:
        problems = root_problems(d, delegator.card)
    else:
        parent = state.delegations.get(d.parent)
        if parent is None or not parent.in_force(now):
            raise Refused(f"the parent delegation {d.parent} is not in force")
        if _depth(state, parent.delegation) >= MAX_DELEGATION_DEPTH:
            raise Refused(f"a delegation is passed on at most {MAX_DELEGATION_DEPTH - 1} times")
        problems = widening(d, parent.delegation)
    if problems:
        raise Refused(f"{d.delegator} cannot give this: " + "; ".join(problems))
    payload = DelegationGrantedPayload(delegation=d, statement=statement)
    return [DelegationGranted(actor=registry_id, occurred_at=now, payload=payload)]


def decide_revocation(
    state: RegistryState,
    request: DelegationRevocation,
    statement: SignedStatement,
    operators: Mapping[str, str],
    now: datetime,
    registry_id: str,
) -> list[Event]:
    held = state.delegations.get(request.delegation_id)
    if held is None:
        raise Refused(f"no delegation {request.delegation_id}")
    if held.revoked_at is not None:
        return []  # revoked already
    by = operators.get(statement.signer) or _up_the_chain(state, held.delegation, statement.signer)
    if by is None:
        raise Refused(
            "only the delegator, someone up its chain, or an operator revokes a delegation"
        )
    payload = DelegationRevokedPayload(
        delegation_id=request.delegation_id,
        delegate=held.delegation.delegate,
        by=by,
        reason=request.reason,
        statement=statement,
    )
    return [DelegationRevoked(actor=registry_id, occurred_at=now, payload=payload)]


def _depth(state: RegistryState, delegation: Delegation) -> int:
    """How many links `delegation`'s chain has, itself included."""
    depth, current = 1, delegation
    while current.parent is not None and depth <= MAX_DELEGATION_DEPTH:
        parent = state.delegations.get(current.parent)
        if parent is None:
            break
        depth, current = depth + 1, parent.delegation
    return depth


def _up_the_chain(state: RegistryState, delegation: Delegation, signer: str) -> str | None:
    """The delegator in `delegation`'s chain whose current key `signer` is, if any."""
    current: Delegation | None = delegation
    for _ in range(8):
        if current is None:
            return None
        if signer in state.current_keys(current.delegator):
            return current.delegator
        parent = state.delegations.get(current.parent) if current.parent else None
        current = parent.delegation if parent else None
    return None
