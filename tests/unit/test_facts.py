"""Which statement of a case fact counts (mesh._trust.facts): only its authority's, the
latest before the request, never the requester's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionDenied,
    ActionRequested,
    ActionRequestedPayload,
    DecisionProvenance,
)
from contracts.envelope import Event
from mesh._trust.facts import Statement, authoritative_facts, prior_actions

T0 = datetime(2026, 11, 1, tzinfo=UTC)
AUTHORITIES = {("fraud", "fraud_score"), ("adjudication", "payout_cents")}


def authority(actor: str, fact: str, at: datetime) -> bool:
    return (actor, fact) in AUTHORITIES


def said(sequence: int, actor: str, **evidence: object) -> Statement:
    return Statement(
        sequence=sequence,
        event_id=f"e{sequence}",
        actor=actor,
        stored_at=T0 + timedelta(seconds=sequence),
        evidence=dict(evidence),
    )


def test_a_peer_cannot_supply_a_fact_it_is_not_the_authority_for() -> None:
    statements = [said(1, "fraud", fraud_score=100), said(2, "intake", fraud_score=0)]
    facts = authoritative_facts(statements, authority)
    assert facts["fraud_score"].value == 100
    assert facts["fraud_score"].event_id == "e1"


def test_the_authority_s_latest_statement_before_the_request_counts() -> None:
    statements = [
        said(1, "fraud", fraud_score=90),
        said(2, "fraud", fraud_score=30),
        said(5, "fraud", fraud_score=0),
    ]
    facts = authoritative_facts(statements, authority, before=4)
    assert (facts["fraud_score"].value, facts["fraud_score"].sequence) == (30, 2)


def test_the_requester_never_vouches_for_its_own_request() -> None:
    statements = [said(1, "adjudication", payout_cents=9_000_000)]
    assert authoritative_facts(statements, authority, excluded_actor="adjudication") == {}
    considered = authoritative_facts(statements, authority, considered={"fraud_score"})
    assert considered == {}


def _request(event_id: str) -> ActionRequested:
    return ActionRequested(
        event_id=event_id,
        case_id="c",
        actor="adjudication",
        payload=ActionRequestedPayload(action_type="issue_payment"),
    )


def _decided(kind: type[ActionApproved] | type[ActionDenied], request_id: str) -> Event:
    return kind(
        case_id="c",
        actor="policy",
        payload=ActionDecisionPayload(
            request_id=request_id,
            action_type="issue_payment",
            provenance=DecisionProvenance(policy_bundle_hash="h"),
        ),
    )


def test_earlier_actions_are_every_request_before_whatever_became_of_it() -> None:
    r1, r2 = (
        _request("01933b5e-0000-7000-8000-000000000001"),
        _request("01933b5e-0000-7000-8000-000000000002"),
    )
    approved = [(1, r1), (2, _decided(ActionApproved, r1.event_id)), (3, r2)]
    assert prior_actions(approved, before=3) == ["issue_payment"]
    assert prior_actions(approved, before=1) == []
    # A refusal is an answer too: a smaller second request does not get another one.
    denied = [(1, r1), (2, _decided(ActionDenied, r1.event_id)), (3, r2)]
    assert prior_actions(denied, before=3) == ["issue_payment"]
