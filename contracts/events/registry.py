"""Registry history: agents registered, changed, suspended and revoked.

Every change that puts scope in force carries the operator's signature it rests on
(`grant` / `approval`), so an auditor can check offline that nobody gained scope,
kind or roles without one."""

from __future__ import annotations

import msgspec

from contracts.cards import AgentCard, SignedStatement
from contracts.delegation import Delegation
from contracts.envelope import Event


class _RegistryEvent(Event, frozen=True, kw_only=True):
    family = "registry"


class AgentRegisteredPayload(msgspec.Struct, frozen=True, kw_only=True):
    card: AgentCard
    grant: SignedStatement | None = None  # the operator's enrolment grant it used


class AgentRegistered(_RegistryEvent, frozen=True, kw_only=True, tag="agent_registered"):
    payload: AgentRegisteredPayload

    def subject_key(self) -> str:
        return self.payload.card.agent_id


class AgentCardUpdatedPayload(msgspec.Struct, frozen=True, kw_only=True):
    card: AgentCard
    previous_version: str
    changes: list[str] = msgspec.field(default_factory=list)  # readable, for the audit
    keys_retired: list[str] = msgspec.field(default_factory=list)  # rotated-out keys
    # The operator's signature behind a wider card (a grant, or an approval of the
    # proposed card); None for a change that widens nothing.
    approval: SignedStatement | None = None


class AgentCardUpdated(_RegistryEvent, frozen=True, kw_only=True, tag="agent_card_updated"):
    """The card in force changed (from the time this event was stored)."""

    payload: AgentCardUpdatedPayload

    def subject_key(self) -> str:
        return self.payload.card.agent_id


class AgentCardProposedPayload(msgspec.Struct, frozen=True, kw_only=True):
    card: AgentCard
    previous_version: str
    changes: list[str] = msgspec.field(default_factory=list)


class AgentCardProposed(_RegistryEvent, frozen=True, kw_only=True, tag="agent_card_proposed"):
    """An agent asked for a wider card; it waits for an operator's approval and the
    card in force stays as it was."""

    payload: AgentCardProposedPayload

    def subject_key(self) -> str:
        return self.payload.card.agent_id


class AgentStatusChangePayload(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    reason: str
    by: str  # the operator who did it
    approval: SignedStatement | None = None  # the operator's signed request (or grant)


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


class DelegationGrantedPayload(msgspec.Struct, frozen=True, kw_only=True):
    delegation: Delegation
    statement: SignedStatement  # the delegator's signature over exactly that delegation


class DelegationGranted(_RegistryEvent, frozen=True, kw_only=True, tag="delegation_granted"):
    """A delegation checked and in force from the time this event was stored."""

    payload: DelegationGrantedPayload

    def subject_key(self) -> str:
        return self.payload.delegation.delegate


class DelegationRevokedPayload(msgspec.Struct, frozen=True, kw_only=True):
    delegation_id: str
    delegate: str
    by: str  # the principal who revoked it
    reason: str = ""
    statement: SignedStatement | None = None  # their signed revocation


class DelegationRevoked(_RegistryEvent, frozen=True, kw_only=True, tag="delegation_revoked"):
    """No approval stored from this time on counts under the delegation (nor under any
    passed on from it)."""

    payload: DelegationRevokedPayload

    def subject_key(self) -> str:
        return self.payload.delegate
