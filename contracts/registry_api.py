"""Request/reply contracts of the registry service (`<root>.svc.registry.<operation>`).

    register   body: the AgentCard JSON, signed (Mesh-Signature/Mesh-Signer headers) by
               the agent's key: its own key for a new agent, a currently valid key of
               the agent for an update or a key rotation. A new agent (or a wider card
               to take effect at once) carries an operator's enrolment grant in the
               Mesh-Enrolment-Grant header (a SignedStatement as JSON).
    get        RegistryQuery(agent_id=…)
    list       RegistryQuery(status=…, event_type=…, action_type=…, role=…)
    keys       RegistryQuery(): every principal's key history, status and the cards
               it held over time, for checks by consumers and auditors
    heartbeat  Heartbeat, signed; no reply needed
    activate / suspend / revoke   StatusChangeRequest, signed by an operator
    approve    CardApprovalRequest, signed by an operator: put a proposed card in force

Every reply is a RegistryReply: ok, or an error that says what is wrong.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from contracts.cards import AgentKey, AgentRecord, AgentStatus, CardPeriod, Period
from contracts.delegation import DelegationRecord

OPERATIONS = (
    "register",
    "get",
    "list",
    "keys",
    "heartbeat",
    "activate",
    "suspend",
    "revoke",
    "approve",
    "delegate",
    "revoke_delegation",
)
GRANT_HEADER = "Mesh-Enrolment-Grant"


# The registry reads an agent asks under its own name (`<root>.svc.registry.<op>.<agent>`):
# the broker lets it publish only as itself, and the registry answers only on its inbox.
ASKED_BY_NAME = ("get", "list", "keys")


class RegistryQuery(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str | None = None
    status: AgentStatus | None = None
    event_type: str | None = None  # agents that consume or produce it
    action_type: str | None = None  # agents that may request it
    role: str | None = None
    after: str | None = None  # `list` and `keys` answer in pages: the page after this id


class StatusChangeRequest(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    reason: str


class CardApprovalRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An operator puts an agent's proposed card in force; the digest names exactly
    the card the operator read (contracts.cards.card_digest)."""

    agent_id: str
    card_digest: str
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
    cards: list[CardPeriod] = msgspec.field(default_factory=list)  # in force over time
    # The delegations this principal received (as delegate), revoked ones included.
    delegations: list[DelegationRecord] = msgspec.field(default_factory=list)


class RegistryReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    error: str | None = None
    retry_after: float | None = None  # a refusal that passes: ask again after this many s
    records: list[AgentRecord] = msgspec.field(default_factory=list)
    keys: list[PrincipalKeys] = msgspec.field(default_factory=list)
    # With `keys`: the registry stream sequence the answer reflects (every registry
    # event up to it is applied), so a reader knows how current it is.
    registry_sequence: int = 0
    # `list` and `keys` answer in pages that fit a message: ask again with
    # `after=next_after` while it is set.
    next_after: str | None = None
