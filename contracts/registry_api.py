"""Request/reply contracts of the registry service (`<root>.svc.registry.<operation>`).

    register   body: the AgentCard JSON, signed (Mesh-Signature/Mesh-Signer headers) by
               the agent's key: its own key for a new agent, a currently valid key of
               the agent for an update or a key rotation.
    get        RegistryQuery(agent_id=…)
    list       RegistryQuery(status=…, event_type=…, action_type=…, role=…)
    keys       RegistryQuery(): every principal's key history and status, for
               signature checks by consumers and auditors
    heartbeat  Heartbeat, signed; no reply needed
    activate / suspend / revoke   StatusChangeRequest, signed by an operator

Every reply is a RegistryReply: ok, or an error that says what is wrong.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from contracts.cards import AgentKey, AgentRecord, AgentStatus, Period

OPERATIONS = ("register", "get", "list", "keys", "heartbeat", "activate", "suspend", "revoke")


class RegistryQuery(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str | None = None
    status: AgentStatus | None = None
    event_type: str | None = None  # agents that consume or produce it
    action_type: str | None = None  # agents that may request it
    role: str | None = None


class StatusChangeRequest(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    reason: str


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    sent_at: datetime


class PrincipalKeys(msgspec.Struct, frozen=True, kw_only=True):
    """One principal's keys and lifecycle, as signature checks need them."""

    agent_id: str
    status: AgentStatus
    status_changed_at: datetime
    key_history: list[AgentKey]
    updated_at: datetime  # the newest registry event applied to this principal
    suspensions: list[Period] = msgspec.field(default_factory=list)


class RegistryReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    error: str | None = None
    records: list[AgentRecord] = msgspec.field(default_factory=list)
    keys: list[PrincipalKeys] = msgspec.field(default_factory=list)
