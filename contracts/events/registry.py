"""Registry history: agents registered, changed, suspended and revoked."""

from __future__ import annotations

import msgspec

from contracts.cards import AgentCard
from contracts.envelope import Event


class _RegistryEvent(Event, frozen=True, kw_only=True):
    family = "registry"


class AgentRegisteredPayload(msgspec.Struct, frozen=True, kw_only=True):
    card: AgentCard


class AgentRegistered(_RegistryEvent, frozen=True, kw_only=True, tag="agent_registered"):
    payload: AgentRegisteredPayload

    def subject_key(self) -> str:
        return self.payload.card.agent_id


class AgentCardUpdatedPayload(msgspec.Struct, frozen=True, kw_only=True):
    card: AgentCard
    previous_version: str
    changes: list[str] = msgspec.field(default_factory=list)  # readable, for the audit
    keys_retired: list[str] = msgspec.field(default_factory=list)  # rotated-out keys


class AgentCardUpdated(_RegistryEvent, frozen=True, kw_only=True, tag="agent_card_updated"):
    payload: AgentCardUpdatedPayload

    def subject_key(self) -> str:
        return self.payload.card.agent_id


class AgentStatusChangePayload(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    reason: str
    by: str  # the operator who did it


class AgentActivated(_RegistryEvent, frozen=True, kw_only=True, tag="agent_activated"):
    """registered → active, or suspended → active (reinstated)."""

    payload: AgentStatusChangePayload

    def subject_key(self) -> str:
        return self.payload.agent_id


class AgentSuspended(_RegistryEvent, frozen=True, kw_only=True, tag="agent_suspended"):
    payload: AgentStatusChangePayload

    def subject_key(self) -> str:
        return self.payload.agent_id


class AgentRevoked(_RegistryEvent, frozen=True, kw_only=True, tag="agent_revoked"):
    payload: AgentStatusChangePayload

    def subject_key(self) -> str:
        return self.payload.agent_id
