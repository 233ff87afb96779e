"""Nobody gained scope, kind or roles without an operator's signature (pure).

Checked on the principals the event store sealed, each with the cards it held over
time and the signed statement that put each in force:
- a principal's kind never changes;
- its first card, and every card that widens the one before (consumes, produces,
  reads, facts, roles, actions, limits), rests on an operator's signature that names
  it: an enrolment grant for this agent id and owner, unexpired when the card took
  effect, used once, of at least the card's scope; or an operator's approval citing
  the card's digest; or (a first card only) an operator's activation of this agent;
- a card that widens nothing may follow without a signature.
The mesh's static principals (its services and operators, from the principals file,
in force since the epoch) are the roots of trust and carry no signature.
"""

from __future__ import annotations

import msgspec

from contracts.audit_bundle import AuditPrincipal
from contracts.cards import GRANT_SUBJECT, CardPeriod, EnrolmentGrant, card_digest
from contracts.registry_api import CardApprovalRequest, StatusChangeRequest
from contracts.scope import grant_problems, scope_changes
from mesh.service import SignatureError, signing_operator

_EPOCH_YEAR = 1970


def is_static(principal: AuditPrincipal) -> bool:
    cards = principal.keys.cards
    return bool(cards) and cards[0].valid_from.year == _EPOCH_YEAR and cards[0].approval is None


def operator_keys(principals: list[AuditPrincipal]) -> dict[str, str]:
    """Public key -> operator id, for the static principals with the operator role."""
    return {
        key.public_key: p.keys.agent_id
        for p in principals
        if is_static(p) and "operator" in p.keys.cards[0].card.roles
        for key in p.keys.key_history
    }


def card_findings(principals: list[AuditPrincipal]) -> list[tuple[str, str]]:
    """(where, problem) for every card put in force without the signature it needed."""
    operators = operator_keys(principals)
    findings: list[tuple[str, str]] = []
    grants_used: dict[str, str] = {}
    for principal in principals:
        if is_static(principal):
            continue
        agent_id = principal.keys.agent_id
        cards = principal.keys.cards
        for index, period in enumerate(cards):
            where = (
                f"principal {agent_id}, card v{period.card.version} in force from "
                f"{period.valid_from.isoformat()}"
            )
            if index and period.card.kind != cards[0].card.kind:
                findings.append((where, f"kind changed {cards[0].card.kind} -> {period.card.kind}"))
            widened = scope_changes(cards[index - 1].card, period.card)[0] if index else ["new"]
            if period.approval is None:
                if widened:
                    what = "a first card" if not index else "; ".join(widened)
                    findings.append((where, f"{what} without an operator's signature"))
                continue
            for problem in _approval_problems(agent_id, period, index, operators, grants_used):
                findings.append((where, problem))
    return findings


def _approval_problems(
    agent_id: str,
    period: CardPeriod,
    index: int,
    operators: dict[str, str],
    grants_used: dict[str, str],
) -> list[str]:
    statement = period.approval
    assert statement is not None
    try:
        operator = signing_operator(statement, operators)
    except (SignatureError, ValueError) as exc:
        return [f"the operator's signature does not verify: {exc}"]
    if operator is None:
        return [f"put in force by {statement.signer}, which is not an operator's key"]
    body = statement.body
    card = period.card
    try:
        if statement.subject == GRANT_SUBJECT:
            grant = msgspec.json.decode(body, type=EnrolmentGrant)
            problems = grant_problems(
                grant,
                card,
                signed_by=operator,
                at=period.valid_from,
                used_by=grants_used.get(grant.grant_id),
            )
            grants_used[grant.grant_id] = agent_id
            return [f"rests on grant {grant.grant_id}, which {problem}" for problem in problems]
        if statement.subject.endswith(".svc.registry.approve"):
            approval = msgspec.json.decode(body, type=CardApprovalRequest)
            if approval.agent_id != agent_id or approval.card_digest != card_digest(card):
                return [f"rests on an approval of another card ({approval.agent_id})"]
            return []
        if statement.subject.endswith(".svc.registry.activate") and index == 0:
            activation = msgspec.json.decode(body, type=StatusChangeRequest)
            if activation.agent_id != agent_id:
                return [f"rests on the activation of {activation.agent_id}"]
            return []
    except msgspec.DecodeError as exc:
        return [f"the operator's statement is unreadable: {exc}"]
    return [f"rests on {statement.subject}, which puts no card in force"]
