"""Know Your Agent, as pure logic: decide what a registration or a status change means,
and evolve the registry's state from its history. No I/O, no await.

The rules:
- a card names a known owner, only event types the contracts define, and at least one
  well-formed key;
- a new agent proves it holds a key on its card by signing the card with it; an
  existing agent signs with a key that is currently valid for it (anyone else's
  signature is a forged card). Every key a card adds must also sign it (proof of
  possession). A key belongs to one agent only, and never to a static principal;
- only a registered or active agent may change its card (not a suspended one);
- an agent may not produce the policy's decisions, humans' approvals or the registry's
  history; humans, services and any card with roles or approval types are activated by
  an operator, never automatically;
- a card that widens scope (consumes, produces, actions, limits, roles) must carry a
  new version; re-registering an unchanged card changes nothing;
- keys that leave the card are retired (valid until now), new ones are valid from now;
- revocation is final: a revoked agent's keys end at the revocation, and its id cannot
  register again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec

from contracts.cards import AgentCard, AgentKey, AgentRecord, AgentStatus, Period
from contracts.catalog import EventCatalog
from contracts.envelope import Event
from contracts.events.registry import (
    AgentActivated,
    AgentCardUpdated,
    AgentCardUpdatedPayload,
    AgentRegistered,
    AgentRegisteredPayload,
    AgentRevoked,
    AgentStatusChangePayload,
    AgentSuspended,
)
from contracts.subjects import check_token

StatusTarget = Literal["activate", "suspend", "revoke"]

# Event types only the policy service, a human approver or the registry may publish.
DECISION_TYPES = frozenset(
    {
        "action_approved",
        "action_denied",
        "approval_required",
        "approval_escalated",
        "approval_expired",
    }
)
APPROVAL_TYPES = frozenset({"approval_granted", "approval_rejected"})
REGISTRY_TYPES = frozenset(
    {
        "agent_registered",
        "agent_card_updated",
        "agent_activated",
        "agent_suspended",
        "agent_revoked",
    }
)


class Refused(Exception):
    """A registration or status change the registry will not record, and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class RegistryRules:
    registry_id: str  # the actor of every registry event
    catalog: EventCatalog
    known_owners: frozenset[str] = frozenset()  # empty: any owner is accepted
    auto_activate: bool = False
    # Ids an agent may not take: static principals and the onboarding user share the
    # inbox and user namespace with agents.
    reserved_ids: frozenset[str] = frozenset()
    reserved_keys: frozenset[str] = frozenset()  # the static principals' keys


@dataclass
class RegistryState:
    records: dict[str, AgentRecord] = field(default_factory=dict)
    key_owner: dict[str, str] = field(default_factory=dict)  # public key -> agent id

    def current_keys(self, agent_id: str) -> set[str]:
        record = self.records.get(agent_id)
        if record is None:
            return set()
        return {k.public_key for k in record.key_history if k.valid_until is None}


# ---------------------------------------------------------------------------- decide


def decide_registration(
    state: RegistryState,
    card: AgentCard,
    signer: str,
    now: datetime,
    rules: RegistryRules,
    proven: frozenset[str] = frozenset(),
) -> list[Event]:
    """`signer` signed the request; `proven` are keys that also signed it (proofs of
    possession for keys the card adds)."""
    _check_card(card, rules)
    existing = state.records.get(card.agent_id)
    for key in card.keys:
        if key.public_key in rules.reserved_keys:
            raise Refused(f"key {key.public_key} belongs to a mesh service or operator")
        owner = state.key_owner.get(key.public_key)
        if owner is not None and owner != card.agent_id:
            raise Refused(f"key {key.public_key} already belongs to agent {owner}")
    if existing is None:
        if signer not in {k.public_key for k in card.keys}:
            raise Refused(
                f"forged card: signed by {signer}, which is not one of the card's keys "
                f"(a new agent signs its card with its own key)"
            )
        _check_possession(card, set(), proven | {signer})
        return _registered(card, now, rules)
    if existing.status == "revoked":
        raise Refused(
            f"agent {card.agent_id} was revoked at {existing.status_changed_at.isoformat()}; "
            "revocation is final, register under a new agent id"
        )
    if signer not in state.current_keys(card.agent_id):
        raise Refused(
            f"forged card: signed by {signer}, which is not a current key of agent {card.agent_id}"
        )
    if existing.status == "suspended":
        raise Refused(
            f"agent {card.agent_id} is suspended ({existing.status_reason}); its card "
            "cannot change until an operator reinstates it"
        )
    _check_possession(card, state.current_keys(card.agent_id), proven | {signer})
    return _updated(existing, card, now, rules)


def _check_possession(card: AgentCard, current: set[str], proven: frozenset[str]) -> None:
    unproven = sorted({k.public_key for k in card.keys} - current - proven)
    if unproven:
        raise Refused(
            f"no proof of possession for key(s) {unproven}: every key a card adds must sign it too"
        )


def needs_operator(card: AgentCard) -> bool:
    """Cards an operator must activate: privileged kinds, roles, approval types."""
    return card.kind != "agent" or bool(card.roles) or bool(APPROVAL_TYPES & set(card.produces))


def decide_status_change(
    state: RegistryState,
    agent_id: str,
    target: StatusTarget,
    reason: str,
    by: str,
    now: datetime,
    rules: RegistryRules,
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
    payload = AgentStatusChangePayload(agent_id=agent_id, reason=reason, by=by)
    event_type = {"activate": AgentActivated, "suspend": AgentSuspended, "revoke": AgentRevoked}
    return [event_type[target](actor=rules.registry_id, occurred_at=now, payload=payload)]


def _check_card(card: AgentCard, rules: RegistryRules) -> None:
    problems = []
    try:
        check_token(card.agent_id, "agent id")
    except ValueError as exc:
        problems.append(str(exc))
    if card.agent_id in rules.reserved_ids:
        problems.append(f"agent id {card.agent_id!r} is reserved")
    for name in ("name", "version", "owner", "purpose"):
        if not getattr(card, name).strip():
            problems.append(f"{name} is empty")
    if rules.known_owners and card.owner not in rules.known_owners:
        problems.append(f"unknown owner {card.owner!r}; known owners: {sorted(rules.known_owners)}")
    for event_type in (*card.consumes, *card.produces):
        if event_type not in rules.catalog:
            problems.append(f"unknown event type {event_type!r}")
    produced = set(card.produces)
    if produced & (DECISION_TYPES | REGISTRY_TYPES):
        problems.append(
            f"no card may produce {sorted(produced & (DECISION_TYPES | REGISTRY_TYPES))}: "
            "decisions come from the policy service, history from the registry"
        )
    if produced & APPROVAL_TYPES and (card.kind != "human" or "approver" not in card.roles):
        problems.append("only a human with the approver role may produce approvals")
    if not card.keys:
        problems.append("the card lists no key")
    for key in card.keys:
        if not _is_user_public_key(key.public_key):
            problems.append(f"{key.public_key!r} is not a user public nkey")
    if problems:
        raise Refused("invalid card: " + "; ".join(problems))


def _is_user_public_key(value: str) -> bool:
    return len(value) == 56 and value.startswith("U") and value.isalnum() and value.isupper()


def _normalised(card: AgentCard) -> AgentCard:
    """The registry decides status and key validity; the card only names the keys."""
    keys = [AgentKey(public_key=k.public_key, valid_from=k.valid_from) for k in card.keys]
    return msgspec.structs.replace(card, status="registered", keys=keys)


def _registered(card: AgentCard, now: datetime, rules: RegistryRules) -> list[Event]:
    events: list[Event] = [
        AgentRegistered(
            actor=rules.registry_id,
            occurred_at=now,
            payload=AgentRegisteredPayload(card=_normalised(card)),
        )
    ]
    if rules.auto_activate and not needs_operator(card):
        events.append(
            AgentActivated(
                actor=rules.registry_id,
                occurred_at=now,
                payload=AgentStatusChangePayload(
                    agent_id=card.agent_id,
                    reason=f"activated on registration (owner {card.owner} is known)",
                    by=rules.registry_id,
                ),
            )
        )
    return events


def scope_changes(old: AgentCard, new: AgentCard) -> tuple[list[str], list[str]]:
    """(widening changes, other changes), each readable by a person."""
    widened: list[str] = []
    other: list[str] = []

    def compare(what: str, before: Iterable[str], after: Iterable[str]) -> None:
        added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
        if added:
            widened.append(f"{what} added {added}")
        if removed:
            other.append(f"{what} removed {removed}")

    compare("consumes", old.consumes, new.consumes)
    compare("produces", old.produces, new.produces)
    compare("roles", old.roles, new.roles)
    old_actions = {a.action_type: a.limits for a in old.actions}
    new_actions = {a.action_type: a.limits for a in new.actions}
    compare("actions", old_actions, new_actions)
    for action in sorted(set(old_actions) & set(new_actions)):
        if old_actions[action] != new_actions[action]:
            # Any change of a limit may widen it (a higher amount, a new currency).
            widened.append(
                f"limits of {action} changed {old_actions[action]} -> {new_actions[action]}"
            )
    if old.kind != new.kind:
        widened.append(f"kind changed {old.kind} -> {new.kind}")
    for name in ("name", "owner", "purpose", "version"):
        if getattr(old, name) != getattr(new, name):
            other.append(f"{name} changed {getattr(old, name)!r} -> {getattr(new, name)!r}")
    return widened, other


def _updated(
    existing: AgentRecord, card: AgentCard, now: datetime, rules: RegistryRules
) -> list[Event]:
    old, new = existing.card, _normalised(card)
    widened, other = scope_changes(old, new)
    current = {k.public_key for k in existing.key_history if k.valid_until is None}
    offered = {k.public_key for k in new.keys}
    retired = sorted(current - offered)
    added = sorted(offered - current)
    if added:
        other.append(f"keys added {added}")
    if retired:
        other.append(f"keys retired {retired}")
    if not widened and not other:
        return []  # the same card again: registration is idempotent
    if widened and new.version == old.version:
        raise Refused(
            f"card {card.agent_id} widens its scope ({'; '.join(widened)}) "
            f"without a new version (still {old.version})"
        )
    return [
        AgentCardUpdated(
            actor=rules.registry_id,
            occurred_at=now,
            payload=AgentCardUpdatedPayload(
                card=new,
                previous_version=old.version,
                changes=widened + other,
                keys_retired=retired,
            ),
        )
    ]


# ---------------------------------------------------------------------------- evolve


def evolve(state: RegistryState, event: Event) -> RegistryState:
    """Apply one registry event (its occurred_at is when it took effect)."""
    at = event.occurred_at
    match event:
        case AgentRegistered(payload=AgentRegisteredPayload(card=card)):
            keys = [AgentKey(public_key=k.public_key, valid_from=at) for k in card.keys]
            state.records[card.agent_id] = AgentRecord(
                card=card,
                status="registered",
                registered_at=at,
                updated_at=at,
                status_changed_at=at,
                key_history=keys,
            )
            for key in keys:
                state.key_owner[key.public_key] = card.agent_id
        case AgentCardUpdated(payload=payload):
            record = state.records[payload.card.agent_id]
            history = [
                msgspec.structs.replace(k, valid_until=at)
                if k.public_key in payload.keys_retired and k.valid_until is None
                else k
                for k in record.key_history
            ]
            known = {k.public_key for k in history if k.valid_until is None}
            for key in payload.card.keys:
                if key.public_key not in known:
                    history.append(AgentKey(public_key=key.public_key, valid_from=at))
                    state.key_owner[key.public_key] = payload.card.agent_id
            state.records[payload.card.agent_id] = msgspec.structs.replace(
                record, card=payload.card, updated_at=at, key_history=history
            )
        case AgentActivated(payload=change):
            record = state.records[change.agent_id]
            closed = [
                p if p.end else msgspec.structs.replace(p, end=at) for p in record.suspensions
            ]
            _set_status(state, change, "active", at, suspensions=closed)
        case AgentSuspended(payload=change):
            record = state.records[change.agent_id]
            opened = [*record.suspensions, Period(start=at)]
            _set_status(state, change, "suspended", at, suspensions=opened)
        case AgentRevoked(payload=change):
            record = state.records[change.agent_id]
            ended = [
                k if k.valid_until else msgspec.structs.replace(k, valid_until=at)
                for k in record.key_history
            ]
            _set_status(state, change, "revoked", at, key_history=ended)
        case _:
            raise ValueError(f"not a registry event: {event.event_name()}")
    return state


def _set_status(
    state: RegistryState,
    change: AgentStatusChangePayload,
    status: AgentStatus,
    at: datetime,
    **also: Any,
) -> None:
    record = state.records[change.agent_id]
    state.records[change.agent_id] = msgspec.structs.replace(
        record,
        status=status,
        status_reason=change.reason,
        status_changed_at=at,
        updated_at=at,
        **also,
    )
