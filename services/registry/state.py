"""The registry's state, evolved from its history (pure): who is registered, with which
cards and keys over time, and which grants were used. Every change takes effect at the
broker time its event was stored in the registry stream (`evolve(..., at=stored_at)`),
never at the registry's own clock. No I/O, no await."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from contracts.cards import AgentKey, AgentRecord, AgentStatus, CardPeriod, Period, SignedStatement
from contracts.delegation import DelegationRecord
from contracts.envelope import Event
from contracts.events.registry import (
    AgentActivated,
    AgentCardProposed,
    AgentCardUpdated,
    AgentCardUpdatedPayload,
    AgentRegistered,
    AgentRegisteredPayload,
    AgentRevoked,
    AgentStatusChangePayload,
    AgentSuspended,
    DelegationGranted,
    DelegationRevoked,
)
from services.registry.grants import grant_id_of


@dataclass
class RegistryState:
    records: dict[str, AgentRecord] = field(default_factory=dict)
    key_owner: dict[str, str] = field(default_factory=dict)  # public key -> agent id
    used_grants: dict[str, str] = field(default_factory=dict)  # grant id -> agent id
    delegations: dict[str, DelegationRecord] = field(default_factory=dict)  # by id
    sequence: int = 0  # the registry stream sequence applied last

    def current_keys(self, agent_id: str) -> set[str]:
        record = self.records.get(agent_id)
        if record is None:
            return set()
        return {k.public_key for k in record.key_history if k.valid_until is None}


def evolve(state: RegistryState, event: Event, at: datetime, sequence: int = 0) -> RegistryState:
    """Apply one registry event, in force from `at`: the broker time it was stored."""
    match event:
        case AgentRegistered(payload=AgentRegisteredPayload(card=card, grant=grant)):
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
            _use_grant(state, grant, card.agent_id)
        case AgentCardUpdated(payload=payload):
            _apply_card(state, payload, at)
        case AgentCardProposed(payload=proposal):
            record = state.records[proposal.card.agent_id]
            state.records[proposal.card.agent_id] = msgspec.structs.replace(
                record, pending_card=proposal.card, updated_at=at
            )
        case AgentActivated(payload=change):
            record = state.records[change.agent_id]
            closed = [
                p if p.end else msgspec.structs.replace(p, end=at) for p in record.suspensions
            ]
            cards = record.card_history or [
                # The first activation puts the registered card in force.
                CardPeriod(card=record.card, valid_from=at, approval=change.approval)
            ]
            _set_status(state, change, "active", at, suspensions=closed, card_history=cards)
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
            _set_status(
                state,
                change,
                "revoked",
                at,
                key_history=ended,
                card_history=_closed(record.card_history, at),
                pending_card=None,
            )
        case DelegationGranted(payload=granted):
            state.delegations[granted.delegation.delegation_id] = DelegationRecord(
                delegation=granted.delegation, statement=granted.statement, granted_at=at
            )
        case DelegationRevoked(payload=revoked):
            held = state.delegations[revoked.delegation_id]
            state.delegations[revoked.delegation_id] = msgspec.structs.replace(
                held, revoked_at=at, revoked_by=revoked.by, revocation_reason=revoked.reason
            )
        case _:
            raise ValueError(f"not a registry event: {event.event_name()}")
    state.sequence = max(state.sequence, sequence)
    return state


def _apply_card(state: RegistryState, payload: AgentCardUpdatedPayload, at: datetime) -> None:
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
            known.add(key.public_key)  # a key listed twice is still one key
            history.append(AgentKey(public_key=key.public_key, valid_from=at))
            state.key_owner[key.public_key] = payload.card.agent_id
    cards = [
        *_closed(record.card_history, at),
        CardPeriod(card=payload.card, valid_from=at, approval=payload.approval),
    ]
    state.records[payload.card.agent_id] = msgspec.structs.replace(
        record,
        card=payload.card,
        updated_at=at,
        key_history=history,
        card_history=cards,
        pending_card=None,
    )
    _use_grant(state, payload.approval, payload.card.agent_id)


def _closed(cards: list[CardPeriod], at: datetime) -> list[CardPeriod]:
    return [c if c.valid_until else msgspec.structs.replace(c, valid_until=at) for c in cards]


def _use_grant(state: RegistryState, statement: SignedStatement | None, agent_id: str) -> None:
    grant_id = grant_id_of(statement)
    if grant_id is not None:
        state.used_grants[grant_id] = agent_id


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
