"""The agent card: who an agent is, who answers for it, and what it may do."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

AgentStatus = Literal["registered", "active", "suspended", "revoked"]


class ActionGrant(msgspec.Struct, frozen=True, kw_only=True):
    action_type: str
    limits: dict[str, Any] = msgspec.field(default_factory=dict)


class AgentKey(msgspec.Struct, frozen=True, kw_only=True):
    public_key: str  # an nkey user public key, "U…"
    valid_from: datetime
    valid_until: datetime | None = None


class AgentCard(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    name: str
    version: str
    owner: str  # the accountable team or person
    purpose: str
    consumes: list[str] = msgspec.field(default_factory=list)  # event_type names
    produces: list[str] = msgspec.field(default_factory=list)
    actions: list[ActionGrant] = msgspec.field(default_factory=list)
    keys: list[AgentKey] = msgspec.field(default_factory=list)
    status: AgentStatus = "registered"
