"""The registry's rules, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from contracts import CATALOG, ActionGrant, AgentCard, AgentKey
from contracts.cards import Period, SignedStatement, card_digest
from contracts.envelope import Event
from mesh._trust.enrolment import grant_for, sign_grant
from mesh._trust.identity import Identity
from services.registry.domain import (
    Refused,
    RegistryRules,
    RegistryState,
    decide_card_approval,
    decide_registration,
    decide_status_change,
    evolve,
    scope_changes,
)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
OPERATOR = Identity.generate()
RULES = RegistryRules(
    registry_id="registry",
    catalog=CATALOG,
    known_owners=frozenset({"claims-team"}),
    reserved_ids=frozenset({"onboarding", "operator"}),
    operators={OPERATOR.public_key: "operator"},
)


def card(key: Identity, **changes: object) -> AgentCard:
    base = AgentCard(
        agent_id="fraud",
        name="Fraud screening",
        version="1.0.0",
        owner="claims-team",
        purpose="scores risk",
        consumes=["case_opened"],
        produces=["case_step_completed"],
        actions=[ActionGrant(action_type="flag_case", limits={"max_per_day": 10})],
        keys=[AgentKey(public_key=key.public_key, valid_from=T0)],
    )
    return msgspec.structs.replace(base, **changes)


def grant(of: AgentCard, *, by: Identity = OPERATOR, **changes: object) -> SignedStatement:
    issued = grant_for(of, issued_by="operator", now=T0)
    return sign_grant(msgspec.structs.replace(issued, **changes), by)


def apply(state: RegistryState, events: list[Event], at: datetime = T0) -> RegistryState:
    for event in events:
        evolve(state, event, at)
    return state


def registered(key: Identity, at: datetime = T0) -> RegistryState:
    events = decide_registration(
        RegistryState(), card(key), key.public_key, at, RULES, grant=grant(card(key))
    )
    return apply(RegistryState(), events, at)


def test_a_new_agent_with_a_grant_is_registered_and_activated() -> None:
    key = Identity.generate()
    statement = grant(card(key))
    events = decide_registration(
        RegistryState(), card(key), key.public_key, T0, RULES, grant=statement
    )
    assert [e.event_name() for e in events] == ["agent_registered", "agent_activated"]
    assert all(e.actor == "registry" for e in events)
    state = apply(RegistryState(), events)
    record = state.records["fraud"]
    assert record.status == "active"
    assert record.key_history == [AgentKey(public_key=key.public_key, valid_from=T0)]
    assert state.key_owner[key.public_key] == "fraud"
    # The card is in force from when the events were stored, on the grant's signature.
    [period] = record.card_history
    assert period.valid_from == T0
    assert period.approval == statement


def test_nobody_enrols_without_a_grant() -> None:
    key = Identity.generate()
    with pytest.raises(Refused, match="has no enrolment grant"):
        decide_registration(RegistryState(), card(key), key.public_key, T0, RULES)


@pytest.mark.parametrize(
    ("grant_changes", "signer", "reason"),
    [
        ({}, Identity.generate(), "not an operator"),
        ({"agent_id": "other"}, OPERATOR, "is for agent other"),
        ({"owner": "someone"}, OPERATOR, "is for owner 'someone'"),
        ({"expires_at": T0 - timedelta(seconds=1)}, OPERATOR, "expired"),
        ({"produces": []}, OPERATOR, r"produces \['case_step_completed'\] are not granted"),
        ({"kind": "human"}, OPERATOR, "kind agent is not the granted human"),
        (
            {"actions": [ActionGrant(action_type="flag_case", limits={"max_per_day": 5})]},
            OPERATOR,
            "max_per_day=10 exceeds 5",
        ),
        ({"issued_by": "mallory"}, OPERATOR, "names mallory as issuer"),
    ],
)
def test_a_grant_is_checked_in_every_respect(
    grant_changes: dict[str, object], signer: Identity, reason: str
) -> None:
    key = Identity.generate()
    statement = grant(card(key), by=signer, **grant_changes)
    with pytest.raises(Refused, match=reason):
        decide_registration(RegistryState(), card(key), key.public_key, T0, RULES, grant=statement)


def test_a_tampered_grant_does_not_verify() -> None:
    key = Identity.generate()
    statement = grant(card(key))
    forged = msgspec.structs.replace(
        statement, body_b64=grant(card(key), roles=["approver"]).body_b64
    )
    with pytest.raises(Refused, match="signature does not match"):
        decide_registration(RegistryState(), card(key), key.public_key, T0, RULES, grant=forged)


def test_a_grant_is_good_for_one_enrolment() -> None:
    first, second = Identity.generate(), Identity.generate()
    statement = grant(card(first))
    state = apply(
        RegistryState(),
        decide_registration(
            RegistryState(), card(first), first.public_key, T0, RULES, grant=statement
        ),
    )
    state.records.clear()  # as if the id were free again: the grant is still spent
    state.key_owner.clear()
    with pytest.raises(Refused, match="already used"):
        decide_registration(state, card(second), second.public_key, T0, RULES, grant=statement)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"owner": "someone"}, "unknown owner 'someone'"),
        ({"consumes": ["nope"]}, "unknown event type 'nope'"),
        ({"reads": ["nope"]}, "unknown event type 'nope'"),
        ({"facts": ["a.b"]}, "fact must be"),
        ({"keys": []}, "the card lists no key"),
        ({"keys": [AgentKey(public_key="UBAD", valid_from=T0)]}, "is not a user public nkey"),
        ({"agent_id": "operator"}, "agent id 'operator' is reserved"),
        ({"agent_id": "a b"}, "agent id must be"),
        ({"purpose": " "}, "purpose is empty"),
    ],
)
def test_invalid_cards_are_refused_with_every_reason(
    changes: dict[str, object], reason: str
) -> None:
    key = Identity.generate()
    bad = card(key, **changes)
    with pytest.raises(Refused, match=reason):
        decide_registration(RegistryState(), bad, key.public_key, T0, RULES, grant=grant(bad))


def test_a_new_card_must_be_signed_by_its_own_key() -> None:
    key, other = Identity.generate(), Identity.generate()
    with pytest.raises(Refused, match="forged card"):
        decide_registration(
            RegistryState(), card(key), other.public_key, T0, RULES, grant=grant(card(key))
        )


def test_a_key_belongs_to_one_agent() -> None:
    key = Identity.generate()
    state = registered(key)
    copycat = card(key, agent_id="copycat")
    with pytest.raises(Refused, match="already belongs to agent fraud"):
        decide_registration(state, copycat, key.public_key, T0, RULES, grant=grant(copycat))


def test_re_registering_the_same_card_changes_nothing() -> None:
    key = Identity.generate()
    state = registered(key)
    later = T0 + timedelta(days=1)
    resubmitted = card(key, keys=[AgentKey(public_key=key.public_key, valid_from=later)])
    assert decide_registration(state, resubmitted, key.public_key, later, RULES) == []


def test_scope_changes_name_what_widened() -> None:
    key = Identity.generate()
    old = card(key)
    new = card(
        key,
        produces=["case_step_completed", "case_closed"],
        facts=["fraud_score"],
        actions=[ActionGrant(action_type="flag_case", limits={"max_per_day": 50})],
        purpose="scores risk and closes cases",
    )
    widened, other = scope_changes(old, new)
    assert "produces added ['case_closed']" in widened
    assert "facts added ['fraud_score']" in widened
    assert any(w.startswith("limits of flag_case changed") for w in widened)
    assert any(o.startswith("purpose changed") for o in other)
    narrowed, _ = scope_changes(old, card(key, consumes=[]))
    assert narrowed == []


def test_narrowing_takes_effect_widening_waits_for_an_operator() -> None:
    key = Identity.generate()
    state = registered(key)
    events = decide_registration(state, card(key, actions=[]), key.public_key, T0, RULES)
    assert [e.event_name() for e in events] == ["agent_card_updated"]
    with pytest.raises(Refused, match="widens its scope"):
        decide_registration(state, card(key, facts=["fraud_score"]), key.public_key, T0, RULES)
    wider = card(key, version="2", facts=["fraud_score"])
    t1 = T0 + timedelta(hours=1)
    proposal = decide_registration(state, wider, key.public_key, t1, RULES)
    assert [e.event_name() for e in proposal] == ["agent_card_proposed"]
    state = apply(state, proposal, t1)
    record = state.records["fraud"]
    assert record.card.version == "1.0.0"  # the card in force stays
    assert record.pending_card is not None
    assert [p.card.version for p in record.card_history] == ["1.0.0"]
    # Asking again changes nothing: it waits.
    assert decide_registration(state, wider, key.public_key, t1, RULES) == []


def test_an_operator_approves_exactly_the_card_it_read() -> None:
    key = Identity.generate()
    state = registered(key)
    wider = card(key, version="2", facts=["fraud_score"])
    t1, t2 = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    state = apply(state, decide_registration(state, wider, key.public_key, t1, RULES), t1)
    pending = state.records["fraud"].pending_card
    assert pending is not None
    approval = SignedStatement.of("mesh.svc.registry.approve", b"{}", OPERATOR.public_key, "sig")
    with pytest.raises(Refused, match="it changed since you read it"):
        decide_card_approval(state, "fraud", "0" * 64, t2, RULES, approval)
    events = decide_card_approval(state, "fraud", card_digest(pending), t2, RULES, approval)
    state = apply(state, events, t2)
    record = state.records["fraud"]
    assert record.card.version == "2"
    assert record.pending_card is None
    old, new = record.card_history
    assert (old.valid_until, new.valid_from, new.approval) == (t2, t2, approval)


def test_a_grant_widens_at_once() -> None:
    key = Identity.generate()
    state = registered(key)
    wider = card(key, version="2", facts=["fraud_score"])
    events = decide_registration(state, wider, key.public_key, T0, RULES, grant=grant(wider))
    assert [e.event_name() for e in events] == ["agent_card_updated"]


def test_a_kind_never_changes() -> None:
    key = Identity.generate()
    state = registered(key)
    human = card(key, version="2", kind="human", roles=["approver"], produces=["approval_granted"])
    with pytest.raises(Refused, match="a kind never changes"):
        decide_registration(state, human, key.public_key, T0, RULES, grant=grant(human))


def test_rotation_retires_the_old_key_which_never_comes_back() -> None:
    old, new = Identity.generate(), Identity.generate()
    state = registered(old)
    rotated = card(old, keys=[AgentKey(public_key=new.public_key, valid_from=T0)])
    t1, t2 = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    with pytest.raises(Refused, match="no proof of possession"):
        decide_registration(state, rotated, old.public_key, t1, RULES)
    proven = frozenset({new.public_key})
    state = apply(state, decide_registration(state, rotated, old.public_key, t1, RULES, proven), t1)
    history = state.records["fraud"].key_history
    assert history == [
        AgentKey(public_key=old.public_key, valid_from=T0, valid_until=t1),
        AgentKey(public_key=new.public_key, valid_from=t1),
    ]
    # The retired key can no longer sign for the agent...
    with pytest.raises(Refused, match="not a current key"):
        decide_registration(state, rotated, old.public_key, t1, RULES, proven)
    # ...and the agent cannot take it back.
    both = card(
        old,
        keys=[
            AgentKey(public_key=new.public_key, valid_from=t2),
            AgentKey(public_key=old.public_key, valid_from=t2),
        ],
    )
    with pytest.raises(Refused, match="a retired key never comes back"):
        decide_registration(state, both, new.public_key, t2, RULES, frozenset({old.public_key}))


def test_revocation_is_final_and_ends_every_key_and_card() -> None:
    key = Identity.generate()
    state = registered(key)
    t1 = T0 + timedelta(days=2)
    state = apply(
        state, decide_status_change(state, "fraud", "revoke", "leak", "ops", t1, RULES), t1
    )
    record = state.records["fraud"]
    assert record.status == "revoked"
    assert record.key_history[0].valid_until == t1
    assert record.card_history[0].valid_until == t1
    with pytest.raises(Refused, match="revocation is final"):
        decide_status_change(state, "fraud", "activate", "oops", "ops", t1, RULES)
    with pytest.raises(Refused, match="was revoked"):
        decide_registration(state, card(key), key.public_key, t1, RULES)


def test_status_changes_are_idempotent_and_need_a_reason() -> None:
    key = Identity.generate()
    state = registered(key)
    assert decide_status_change(state, "fraud", "activate", "again", "ops", T0, RULES) == []
    with pytest.raises(Refused, match="needs a reason"):
        decide_status_change(state, "fraud", "suspend", "  ", "ops", T0, RULES)
    with pytest.raises(Refused, match="no agent 'ghost'"):
        decide_status_change(state, "ghost", "suspend", "x", "ops", T0, RULES)


def test_a_suspended_agent_cannot_change_its_card() -> None:
    key, thief = Identity.generate(), Identity.generate()
    state = registered(key)
    state = apply(state, decide_status_change(state, "fraud", "suspend", "leak", "ops", T0, RULES))
    takeover = card(key, version="2", keys=[AgentKey(public_key=thief.public_key, valid_from=T0)])
    with pytest.raises(Refused, match="is suspended"):
        decide_registration(
            state, takeover, key.public_key, T0, RULES, frozenset({thief.public_key})
        )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"produces": ["action_approved"]}, "decisions come from the policy service"),
        ({"produces": ["agent_revoked"]}, "history from the registry"),
        ({"produces": ["approval_granted"]}, "only a human with the approver role"),
    ],
)
def test_privileged_event_types_are_not_for_agents(changes: dict[str, object], reason: str) -> None:
    key = Identity.generate()
    bad = card(key, **changes)
    with pytest.raises(Refused, match=reason):
        decide_registration(RegistryState(), bad, key.public_key, T0, RULES, grant=grant(bad))


def test_a_principal_s_key_cannot_be_claimed() -> None:
    key = Identity.generate()
    rules = RegistryRules(
        registry_id="registry",
        catalog=CATALOG,
        reserved_keys=frozenset({key.public_key}),
        operators=RULES.operators,
    )
    with pytest.raises(Refused, match="belongs to a mesh service or operator"):
        decide_registration(
            RegistryState(), card(key), key.public_key, T0, rules, grant=grant(card(key))
        )


def test_suspensions_are_remembered_after_reinstatement() -> None:
    key = Identity.generate()
    state = registered(key)
    t1, t2 = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    state = apply(state, decide_status_change(state, "fraud", "suspend", "x", "ops", t1, RULES), t1)
    state = apply(
        state, decide_status_change(state, "fraud", "activate", "y", "ops", t2, RULES), t2
    )
    assert state.records["fraud"].suspensions == [Period(start=t1, end=t2)]
