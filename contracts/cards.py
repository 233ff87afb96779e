"""The agent card: who an agent is, who answers for it, and what it may do."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

AgentStatus = Literal["registered", "active", "suspended", "revoked"]
# An agent acts in cases; a human approves or operates; a service is mesh infrastructure.
PrincipalKind = Literal["agent", "human", "service"]


class ActionGrant(msgspec.Struct, frozen=True, kw_only=True):
    action_type: str
    limits: dict[str, Any] = msgspec.field(default_factory=dict)


class AgentKey(msgspec.Struct, frozen=True, kw_only=True):
    public_key: str  # an nkey user public key, "U…"
    valid_from: datetime
    valid_until: datetime | None = None


class AgentCard(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent declares about itself when it registers. Modelled on A2A agent
    cards, plus what they lack: an accountable owner, an explicit scope (event types
    and actions with limits), a lifecycle and the key history."""

    agent_id: str
    name: str
    version: str
    owner: str  # the accountable team or person
    purpose: str
    kind: PrincipalKind = "agent"
    roles: list[str] = msgspec.field(default_factory=list)  # e.g. "approver"
    consumes: list[str] = msgspec.field(default_factory=list)  # event_type names
    produces: list[str] = msgspec.field(default_factory=list)
    actions: list[ActionGrant] = msgspec.field(default_factory=list)
    keys: list[AgentKey] = msgspec.field(default_factory=list)
    status: AgentStatus = "registered"


class Period(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    end: datetime | None = None  # None: still going on


class AgentRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The registry's current view of one agent (the KV value, and lookup replies)."""

    card: AgentCard
    status: AgentStatus
    status_reason: str = ""
    registered_at: datetime
    updated_at: datetime
    status_changed_at: datetime
    # Every key the agent ever had, with the period it was valid: an old event is
    # verified with the key that was valid when it was written.
    key_history: list[AgentKey] = msgspec.field(default_factory=list)
    # When the agent was suspended: nothing it signed then is valid, even after it
    # is reinstated.
    suspensions: list[Period] = msgspec.field(default_factory=list)
    last_heartbeat: datetime | None = None
    stale: bool = False  # set in lookups: no heartbeat within the liveness window

    @property
    def agent_id(self) -> str:
        return self.card.agent_id
