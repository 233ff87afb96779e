"""Know Your Agent, as pure logic: decide what a registration or a status change means,
and evolve the registry's state from its history. No I/O, no await.

The decisions are here; what a card must meet is in `rules.py`, enrolment grants in
`grants.py`, the state and `evolve` in `state.py` (all pure, re-exported here).

The rules:
- a card names a known owner, only event types the contracts define, and at least one
  well-formed key;
- nobody gains scope, kind or roles without an operator's signature. A new agent
  enrols only with an operator's enrolment grant (signed, for this agent id and owner,
  unexpired, used once) and only within the scope the grant names; it is then active
  at once, the grant being the operator's activation. A card that widens an active
  agent's scope (consumes, produces, reads, facts, actions, limits, roles) is only
  *proposed* until an operator approves exactly that card (or it brings a grant that
  covers it); meanwhile the card in force stays. A kind never changes;
- a new agent proves it holds a key on its card by signing the card with it; an
  existing agent signs with a key that is currently valid for it (anyone else's
  signature is a forged card). Every key a card adds must also sign it (proof of
  possession). A key belongs to one agent only, never to a static principal, and a
  retired key never comes back;
- only an active agent may change its card (not a suspended or revoked one);
- an agent may not produce the policy's decisions or the registry's history; only a
  human with the approver role produces approvals;
- a card that widens scope must carry a new version; re-registering an unchanged card
  changes nothing;
- keys that leave the card are retired (valid until the change), new ones are valid
  from it;
- revocation is final: a revoked agent's keys and card end at the revocation, and its
  id cannot register again.

Every change takes effect at the broker time its event was stored in the registry
stream (`evolve(..., at=stored_at)`), never at the registry's own clock: a reader that
has seen every registry event stored before a message judges that message exactly as
an auditor later will.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from contracts.cards import (
    AgentCard,
    AgentRecord,
    AgentStatus,
    EnrolmentGrant,
    SignedStatement,
    card_digest,
)
from contracts.envelope import Event
from contracts.events.registry import (
    AgentActivated,
    AgentCardProposed,
    AgentCardProposedPayload,
    AgentCardUpdated,
    AgentCardUpdatedPayload,
    AgentRegistered,
    AgentRegisteredPayload,
    AgentRevoked,
    AgentStatusChangePayload,
    AgentSuspended,
)
from contracts.scope import beyond_grant, scope_changes
from mesh.service import Refused
from services.registry.grants import check_grant
from services.registry.rules import (
    MAX_CARD_PERIODS,
    RegistryRules,
    check_card,
    check_key_ownership,
    check_not_retired,
    check_possession,
    normalised,
)
from services.registry.state import RegistryState, evolve

StatusTarget = Literal["activate", "suspend", "revoke"]


def decide_registration(
    state: RegistryState,
    card: AgentCard,
    signer: str,
    now: datetime,
    rules: RegistryRules,
    proven: frozenset[str] = frozenset(),
    grant: SignedStatement | None = None,
) -> list[Event]:
    """`signer` signed the request; `proven` are keys that also signed it (proofs of
    possession for keys the card adds); `grant` is an operator's enrolment grant."""
    check_card(card, rules)
    existing = state.records.get(card.agent_id)
    check_key_ownership(state, card, rules)
    if existing is None:
        if signer not in {k.public_key for k in card.keys}:
            raise Refused(
                f"forged card: signed by {signer}, which is not one of the card's keys "
                f"(a new agent signs its card with its own key)"
            )
        check_possession(card, set(), proven | {signer})
        if grant is None:
            raise Refused(
                f"agent {card.agent_id} has no enrolment grant: an operator issues one "
                f"(`mesh registry grant {card.agent_id} …`) and the agent presents it"
            )
        enrolment = check_grant(
            grant, card, now, operators=rules.operators, used_grants=state.used_grants
        )
        return _registered(card, grant, enrolment, now, rules)
    if existing.status == "revoked":
        raise Refused(
            f"agent {card.agent_id} was revoked at {existing.status_changed_at.isoformat()}; "
            "revocation is final, register under a new agent id"
        )
    if signer not in state.current_keys(card.agent_id):
        raise Refused(
            f"forged card: signed by {signer}, which is not a current key of agent {card.agent_id}"
        )
    if existing.status != "active":
        raise Refused(
            f"agent {card.agent_id} is {existing.status} ({existing.status_reason}); its card "
            "cannot change until an operator reinstates it"
        )
    if len(existing.card_history) >= MAX_CARD_PERIODS:
        raise Refused(
            f"agent {card.agent_id} has had {len(existing.card_history)} cards; enrol a new "
            "agent id (with a new grant) rather than change this one again"
        )
    check_not_retired(existing, card)
    check_possession(card, state.current_keys(card.agent_id), proven | {signer})
    return _updated(state, existing, card, now, rules, grant)


def decide_status_change(
    state: RegistryState,
    agent_id: str,
    target: StatusTarget,
    reason: str,
    by: str,
    now: datetime,
    rules: RegistryRules,
    approval: SignedStatement | None = None,
) -> list[Event]:
    record = state.records.get(agent_id)
    if record is None:
        raise Refused(f"no agent {agent_id!r} is registered")
    if not reason.strip():
        raise Refused("a status change needs a reason")
    if record.status == "revoked":
        raise Refused(f"agent {agent_id} is revoked; revocation is final")
    wanted: dict[StatusTarget, AgentStatus] = {
        "activate": "active",
        "suspend": "suspended",
        "revoke": "revoked",
    }
    if record.status == wanted[target]:
        return []  # already there: asking twice is not an error
    payload = AgentStatusChangePayload(agent_id=agent_id, reason=reason, by=by, approval=approval)
    event_type = {"activate": AgentActivated, "suspend": AgentSuspended, "revoke": AgentRevoked}
    return [event_type[target](actor=rules.registry_id, occurred_at=now, payload=payload)]


def decide_card_approval(
    state: RegistryState,
    agent_id: str,
    digest: str,
    now: datetime,
    rules: RegistryRules,
    approval: SignedStatement,
) -> list[Event]:
    """An operator puts the proposed card in force: exactly the card it read."""
    record = state.records.get(agent_id)
    if record is None:
        raise Refused(f"no agent {agent_id!r} is registered")
    if record.status == "revoked":
        raise Refused(f"agent {agent_id} is revoked; revocation is final")
    pending = record.pending_card
    if pending is None:
        raise Refused(f"no card of agent {agent_id} waits for approval")
    if card_digest(pending) != digest:
        raise Refused(
            f"the card waiting for approval has digest {card_digest(pending)}, not {digest}: "
            "it changed since you read it; read it again (`mesh registry show`)"
        )
    check_key_ownership(state, pending, rules)
    check_not_retired(record, pending)
    widened, other = scope_changes(record.card, pending)
    return [_card_updated(record, pending, widened + other, now, rules, approval)]


def _registered(
    card: AgentCard,
    grant: SignedStatement,
    enrolment: EnrolmentGrant,
    now: datetime,
    rules: RegistryRules,
) -> list[Event]:
    return [
        AgentRegistered(
            actor=rules.registry_id,
            occurred_at=now,
            payload=AgentRegisteredPayload(card=normalised(card), grant=grant),
        ),
        AgentActivated(
            actor=rules.registry_id,
            occurred_at=now,
            payload=AgentStatusChangePayload(
                agent_id=card.agent_id,
                reason=f"enrolled with grant {enrolment.grant_id} of {enrolment.issued_by}",
                by=enrolment.issued_by,
                approval=grant,
            ),
        ),
    ]


def _updated(
    state: RegistryState,
    existing: AgentRecord,
    card: AgentCard,
    now: datetime,
    rules: RegistryRules,
    grant: SignedStatement | None,
) -> list[Event]:
    old, new = existing.card, normalised(card)
    if new.kind != old.kind:
        raise Refused(
            f"agent {card.agent_id} is a {old.kind}; a kind never changes "
            "(a principal of another kind enrols under its own id)"
        )
    widened, other = scope_changes(old, new)
    keys = _key_changes(existing, new)
    if not widened and not other and not keys:
        return []  # the same card again: registration is idempotent
    if widened and new.version == old.version:
        raise Refused(
            f"card {card.agent_id} widens its scope ({'; '.join(widened)}) "
            f"without a new version (still {old.version})"
        )
    if not widened:
        return [_card_updated(existing, new, other, now, rules, None)]
    if grant is not None:
        check_grant(grant, new, now, operators=rules.operators, used_grants=state.used_grants)
        return [_card_updated(existing, new, widened + other, now, rules, grant)]
    if existing.pending_card == new:
        return []  # proposed already: it waits for the operator
    return [
        AgentCardProposed(
            actor=rules.registry_id,
            occurred_at=now,
            payload=AgentCardProposedPayload(
                card=new, previous_version=old.version, changes=widened + other + keys
            ),
        )
    ]


def _key_changes(existing: AgentRecord, card: AgentCard) -> list[str]:
    current = {k.public_key for k in existing.key_history if k.valid_until is None}
    offered = {k.public_key for k in card.keys}
    changes = []
    if offered - current:
        changes.append(f"keys added {sorted(offered - current)}")
    if current - offered:
        changes.append(f"keys retired {sorted(current - offered)}")
    return changes


def _card_updated(
    existing: AgentRecord,
    card: AgentCard,
    changes: list[str],
    now: datetime,
    rules: RegistryRules,
    approval: SignedStatement | None,
) -> AgentCardUpdated:
    current = {k.public_key for k in existing.key_history if k.valid_until is None}
    retired = sorted(current - {k.public_key for k in card.keys})
    return AgentCardUpdated(
        actor=rules.registry_id,
        occurred_at=now,
        payload=AgentCardUpdatedPayload(
            card=card,
            previous_version=existing.card.version,
            changes=changes + _key_changes(existing, card),
            keys_retired=retired,
            approval=approval,
        ),
    )


__all__ = [
    "Refused",
    "RegistryRules",
    "RegistryState",
    "StatusTarget",
    "beyond_grant",
    "card_digest",
    "check_grant",
    "decide_card_approval",
    "decide_registration",
    "decide_status_change",
    "evolve",
    "scope_changes",
]
