"""The registry's rules, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from contracts import CATALOG, ActionGrant, AgentCard, AgentKey
from contracts.cards import Period
from contracts.envelope import Event
from mesh.identity import Identity
from services.registry.domain import (
    Refused,
    RegistryRules,
    RegistryState,
    decide_registration,
    decide_status_change,
    evolve,
    scope_changes,
)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
RULES = RegistryRules(
    registry_id="registry",
    catalog=CATALOG,
    known_owners=frozenset({"claims-team"}),
    auto_activate=True,
    reserved_ids=frozenset({"onboarding", "operator"}),
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


def apply(state: RegistryState, events: list[Event]) -> RegistryState:
    for event in events:
        evolve(state, event)
    return state


def registered(key: Identity, at: datetime = T0) -> RegistryState:
    return apply(
        RegistryState(), decide_registration(RegistryState(), card(key), key.public_key, at, RULES)
    )


def test_a_new_agent_is_registered_and_activated() -> None:
    key = Identity.generate()
    events = decide_registration(RegistryState(), card(key), key.public_key, T0, RULES)
    assert [e.event_name() for e in events] == ["agent_registered", "agent_activated"]
    assert all(e.actor == "registry" for e in events)
    state = apply(RegistryState(), events)
    record = state.records["fraud"]
    assert record.status == "active"
    assert record.key_history == [AgentKey(public_key=key.public_key, valid_from=T0)]
    assert state.key_owner[key.public_key] == "fraud"


def test_without_auto_activation_an_agent_waits_registered() -> None:
    key = Identity.generate()
    rules = RegistryRules(registry_id="registry", catalog=CATALOG, auto_activate=False)
    events = decide_registration(RegistryState(), card(key), key.public_key, T0, rules)
    assert apply(RegistryState(), events).records["fraud"].status == "registered"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"owner": "someone"}, "unknown owner 'someone'"),
        ({"consumes": ["nope"]}, "unknown event type 'nope'"),
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
    with pytest.raises(Refused, match=reason):
        decide_registration(RegistryState(), card(key, **changes), key.public_key, T0, RULES)


def test_a_new_card_must_be_signed_by_its_own_key() -> None:
    key, other = Identity.generate(), Identity.generate()
    with pytest.raises(Refused, match="forged card"):
        decide_registration(RegistryState(), card(key), other.public_key, T0, RULES)


def test_a_key_belongs_to_one_agent() -> None:
    key = Identity.generate()
    state = registered(key)
    with pytest.raises(Refused, match="already belongs to agent fraud"):
        decide_registration(state, card(key, agent_id="copycat"), key.public_key, T0, RULES)


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
        actions=[ActionGrant(action_type="flag_case", limits={"max_per_day": 50})],
        purpose="scores risk and closes cases",
    )
    widened, other = scope_changes(old, new)
    assert "produces added ['case_closed']" in widened
    assert any(w.startswith("limits of flag_case changed") for w in widened)
    assert any(o.startswith("purpose changed") for o in other)
    narrowed, _ = scope_changes(old, card(key, consumes=[]))
    assert narrowed == []


def test_narrowing_keeps_the_version_widening_needs_a_new_one() -> None:
    key = Identity.generate()
    state = registered(key)
    events = decide_registration(state, card(key, actions=[]), key.public_key, T0, RULES)
    assert [e.event_name() for e in events] == ["agent_card_updated"]
    with pytest.raises(Refused, match="widens its scope"):
        decide_registration(state, card(key, roles=["approver"]), key.public_key, T0, RULES)


def test_rotation_retires_the_old_key_and_keeps_its_history() -> None:
    old, new = Identity.generate(), Identity.generate()
    state = registered(old)
    rotated = card(old, keys=[AgentKey(public_key=new.public_key, valid_from=T0)])
    t1 = T0 + timedelta(hours=1)
    with pytest.raises(Refused, match="no proof of possession"):
        decide_registration(state, rotated, old.public_key, t1, RULES)
    proven = frozenset({new.public_key})
    state = apply(state, decide_registration(state, rotated, old.public_key, t1, RULES, proven))
    history = state.records["fraud"].key_history
    assert history == [
        AgentKey(public_key=old.public_key, valid_from=T0, valid_until=t1),
        AgentKey(public_key=new.public_key, valid_from=t1),
    ]
    # The retired key can no longer sign for the agent.
    with pytest.raises(Refused, match="not a current key"):
        decide_registration(state, rotated, old.public_key, t1, RULES, proven)


def test_revocation_is_final_and_ends_every_key() -> None:
    key = Identity.generate()
    state = registered(key)
    t1 = T0 + timedelta(days=2)
    state = apply(state, decide_status_change(state, "fraud", "revoke", "leak", "ops", t1, RULES))
    record = state.records["fraud"]
    assert record.status == "revoked"
    assert record.key_history[0].valid_until == t1
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
    with pytest.raises(Refused, match=reason):
        decide_registration(RegistryState(), card(key, **changes), key.public_key, T0, RULES)


def test_privileged_cards_wait_for_an_operator() -> None:
    key = Identity.generate()
    human = card(key, kind="human", roles=["approver"], produces=["approval_granted"])
    events = decide_registration(RegistryState(), human, key.public_key, T0, RULES)
    assert [e.event_name() for e in events] == ["agent_registered"]


def test_a_principal_s_key_cannot_be_claimed() -> None:
    key = Identity.generate()
    rules = RegistryRules(
        registry_id="registry", catalog=CATALOG, reserved_keys=frozenset({key.public_key})
    )
    with pytest.raises(Refused, match="belongs to a mesh service or operator"):
        decide_registration(RegistryState(), card(key), key.public_key, T0, rules)


def test_suspensions_are_remembered_after_reinstatement() -> None:
    key = Identity.generate()
    state = registered(key)
    t1, t2 = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    state = apply(state, decide_status_change(state, "fraud", "suspend", "x", "ops", t1, RULES))
    state = apply(state, decide_status_change(state, "fraud", "activate", "y", "ops", t2, RULES))
    assert state.records["fraud"].suspensions == [Period(start=t1, end=t2)]
