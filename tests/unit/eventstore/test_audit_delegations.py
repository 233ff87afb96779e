"""The verifier's delegation checks, offline (pure): a forged, altered, wrongly signed
or over-wide delegation is named; so is an approval under one that had expired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from contracts.audit_bundle import AuditPrincipal
from contracts.cards import ActionGrant, AgentCard, AgentKey, CardPeriod, SignedStatement
from contracts.delegation import Delegation, DelegationRecord
from contracts.registry_api import PrincipalKeys
from mesh import Identity
from mesh._trust.approval_chain import ActingFor, DecisionScope, acting_for
from mesh._trust.key_directory import KeyDirectory
from services.eventstore.audit.delegations import delegation_findings

T0 = datetime(2026, 11, 30, 9, tzinfo=UTC)
MARIA, BOT = Identity.generate(), Identity.generate()
SUBJECT = "mesh.svc.registry.delegate"


def _card(agent_id: str, kind: str, roles: list[str], limit: int | None = None) -> AgentCard:
    actions = [ActionGrant(action_type="issue_payment", limits={"max_amount": limit})]
    return AgentCard(
        agent_id=agent_id,
        name=agent_id,
        version="1",
        owner="claims-desk",
        purpose="p",
        kind=kind,  # type: ignore[arg-type]
        roles=roles,
        actions=actions if limit else [],
        status="active",
    )


def _delegation(**changes: object) -> Delegation:
    fields: dict[str, object] = {
        "delegation_id": "D-1",
        "delegator": "maria",
        "delegate": "bot",
        "role": "claims_manager",
        "action_types": ["issue_payment"],
        "max_amount": 250_000,
        "case_kinds": ["insurance_claim"],
        "valid_from": T0,
        "valid_until": T0 + timedelta(hours=8),
        **changes,
    }
    return Delegation(**fields)  # type: ignore[arg-type]


def _record(
    delegation: Delegation, signer: Identity = MARIA, body: bytes | None = None
) -> DelegationRecord:
    signed = body if body is not None else msgspec.json.encode(delegation)
    statement = SignedStatement.of(SUBJECT, signed, signer.public_key, signer.sign(SUBJECT, signed))
    return DelegationRecord(delegation=delegation, statement=statement, granted_at=T0)


def _principal(
    agent_id: str, key: Identity, card: AgentCard, delegations: list[DelegationRecord]
) -> AuditPrincipal:
    return AuditPrincipal(
        keys=PrincipalKeys(
            agent_id=agent_id,
            status="active",
            status_changed_at=T0 - timedelta(days=1),
            key_history=[AgentKey(public_key=key.public_key, valid_from=T0 - timedelta(days=1))],
            updated_at=T0,
            cards=[CardPeriod(card=card, valid_from=T0 - timedelta(days=1))],
            delegations=delegations,
        ),
        kind=card.kind,
        roles=card.roles,
    )


def _findings(*records: DelegationRecord) -> list[str]:
    principals = [
        _principal(
            "maria", MARIA, _card("maria", "human", ["approver", "claims_manager"], 500_000), []
        ),
        _principal("bot", BOT, _card("bot", "agent", ["delegate"]), list(records)),
    ]
    keys = KeyDirectory()
    keys.load([p.keys for p in principals])
    return [problem for _, problem in delegation_findings(principals, keys)]


def test_a_delegation_signed_by_its_delegator_within_what_she_holds_is_clean() -> None:
    assert _findings(_record(_delegation())) == []


def test_forged_altered_misattributed_and_over_wide_delegations_are_named() -> None:
    good = _record(_delegation())
    forged = msgspec.structs.replace(
        good, statement=msgspec.structs.replace(good.statement, signature=BOT.sign(SUBJECT, b"x"))
    )
    assert "signature does not hold" in _findings(forged)[0]
    altered = _record(_delegation(max_amount=400_000), body=msgspec.json.encode(_delegation()))
    assert "another delegation than the one recorded" in _findings(altered)[0]
    by_bot = _record(_delegation(), signer=BOT)
    assert "not signed by maria" in _findings(by_bot)[0]
    too_much = _record(_delegation(max_amount=900_000))
    assert "above maria's own limit 500000" in _findings(too_much)[0]
    wrong_role = _record(_delegation(role="head_of_claims"))
    assert "needs the role 'head_of_claims'" in _findings(wrong_role)[0]


def test_an_approval_under_an_expired_or_revoked_delegation_does_not_count() -> None:
    record = _record(_delegation())
    principals = [
        _principal("maria", MARIA, _card("maria", "human", ["approver", "claims_manager"]), []),
        _principal("bot", BOT, _card("bot", "agent", ["delegate"]), [record]),
    ]
    keys = KeyDirectory()
    keys.load([p.keys for p in principals])
    scope = DecisionScope(
        role="claims_manager",
        action_type="issue_payment",
        parameters={"amount": 100_000},
        case_kind="insurance_claim",
        requester="claims-adjudication",
    )
    assert acting_for("bot", "D-1", scope, T0 + timedelta(hours=1), keys) == ActingFor(
        "maria", ["D-1"]
    )
    expired = acting_for("bot", "D-1", scope, T0 + timedelta(hours=9), keys)
    assert isinstance(expired, str)
    assert "was not valid" in expired
    assert "is maria's, not" not in expired
    other = acting_for("maria", "D-1", scope, T0 + timedelta(hours=1), keys)
    assert other == "maria was no agent with the role 'delegate' when it decided"
    wide = DecisionScope(**{**scope.__dict__, "parameters": {"amount": 300_000}})
    assert "above its max_amount 250000" in str(acting_for("bot", "D-1", wide, T0, keys))
    own = DecisionScope(**{**scope.__dict__, "requester": "maria"})
    assert "maria requested issue_payment itself" in str(acting_for("bot", "D-1", own, T0, keys))
