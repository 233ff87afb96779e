"""Invariant 9 as the verifier checks it: every card in force rests on an operator's
signature that names it, unless it widened nothing (services/eventstore/audit/cards.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from contracts.audit_bundle import AuditPrincipal
from contracts.cards import AgentCard, AgentKey, CardPeriod, SignedStatement, card_digest
from contracts.registry_api import CardApprovalRequest, PrincipalKeys
from mesh._trust.enrolment import grant_for, sign_grant
from mesh._trust.identity import Identity
from mesh._trust.principals import EPOCH, StaticPrincipal, static_cards
from services.eventstore.audit.cards import card_findings

T0 = datetime(2026, 11, 1, tzinfo=UTC)
OPERATOR = Identity.generate()
OPERATOR_PRINCIPAL = AuditPrincipal(
    keys=PrincipalKeys(
        agent_id="operator",
        status="active",
        status_changed_at=EPOCH,
        updated_at=EPOCH,
        key_history=[AgentKey(public_key=OPERATOR.public_key, valid_from=EPOCH)],
        cards=static_cards(StaticPrincipal("operator", OPERATOR.public_key, "operator")),
    ),
    kind="human",
    roles=["operator"],
)
CARD = AgentCard(
    agent_id="fraud",
    name="Fraud",
    version="1",
    owner="claims-team",
    purpose="scores",
    produces=["case_step_completed"],
    facts=["fraud_score"],
)


def principal(*cards: CardPeriod) -> AuditPrincipal:
    return AuditPrincipal(
        keys=PrincipalKeys(
            agent_id="fraud",
            status="active",
            status_changed_at=T0,
            updated_at=T0,
            key_history=[],
            cards=list(cards),
        ),
        kind="agent",
    )


def granted(card: AgentCard = CARD, signer: Identity = OPERATOR) -> SignedStatement:
    return sign_grant(grant_for(card, issued_by="operator", now=T0), signer)


def findings(*cards: CardPeriod) -> list[str]:
    return [problem for _, problem in card_findings([OPERATOR_PRINCIPAL, principal(*cards)])]


def test_a_card_enrolled_on_an_operator_s_grant_is_clean() -> None:
    assert findings(CardPeriod(card=CARD, valid_from=T0, approval=granted())) == []


def test_a_first_card_without_a_signature_is_named() -> None:
    assert findings(CardPeriod(card=CARD, valid_from=T0)) == [
        "a first card without an operator's signature"
    ]


def test_a_grant_signed_by_someone_else_or_beyond_its_scope_is_named() -> None:
    mallory = Identity.generate()
    [problem] = findings(CardPeriod(card=CARD, valid_from=T0, approval=granted(signer=mallory)))
    assert "which is not an operator's key" in problem
    narrower = msgspec.structs.replace(CARD, facts=[])
    [problem] = findings(CardPeriod(card=CARD, valid_from=T0, approval=granted(narrower)))
    assert "facts ['fraud_score'] are not granted" in problem


def test_widening_needs_a_signature_naming_the_card_narrowing_does_not() -> None:
    first = CardPeriod(card=CARD, valid_from=T0, valid_until=T0 + timedelta(hours=1))
    first = msgspec.structs.replace(first, approval=granted())
    later = T0 + timedelta(hours=1)
    narrower = msgspec.structs.replace(CARD, version="2", facts=[])
    assert findings(first, CardPeriod(card=narrower, valid_from=later)) == []
    wider = msgspec.structs.replace(
        CARD, version="2", produces=["case_step_completed", "case_closed"]
    )
    [problem] = findings(first, CardPeriod(card=wider, valid_from=later))
    assert "produces added ['case_closed'] without an operator's signature" in problem
    subject = "mesh.svc.registry.approve"
    body = msgspec.json.encode(
        CardApprovalRequest(agent_id="fraud", card_digest=card_digest(wider), reason="ok")
    )
    approval = SignedStatement.of(subject, body, OPERATOR.public_key, OPERATOR.sign(subject, body))
    assert findings(first, CardPeriod(card=wider, valid_from=later, approval=approval)) == []
    other = msgspec.structs.replace(wider, roles=["approver"])
    [problem] = findings(first, CardPeriod(card=other, valid_from=later, approval=approval))
    assert "approval of another card" in problem


def test_a_kind_that_changes_is_named() -> None:
    first = CardPeriod(
        card=CARD, valid_from=T0, valid_until=T0 + timedelta(hours=1), approval=granted()
    )
    human = msgspec.structs.replace(CARD, version="2", kind="human")
    problems = findings(first, CardPeriod(card=human, valid_from=T0 + timedelta(hours=1)))
    assert "kind changed agent -> human" in problems
