"""The agent card: who an agent is, who answers for it, and what it may do.

A card says what an agent *asks* for; what is *in force* is decided by the registry
and always rests on an operator's signature: an enrolment grant (the most scope a new
agent may claim) or an operator's approval of a wider card. The registry keeps the
cards that were in force over time (`CardPeriod`), so every reader — a consumer, the
policy service, an auditor — judges an event by the card its author held when the
event entered the log.
"""

from __future__ import annotations

import base64
import hashlib
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
    cards, plus what they lack: an accountable owner, an explicit scope (event types,
    the facts it vouches for, what it reads, actions with limits), a lifecycle and the
    key history."""

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
    # The case facts (evidence keys, e.g. "fraud_score") this agent is the authority
    # for: readers take such a fact from this agent's events and from no one else's.
    facts: list[str] = msgspec.field(default_factory=list)
    # Event types of the cases it works on that it may read besides what it consumes
    # and produces (e.g. the claim in `case_opened`).
    reads: list[str] = msgspec.field(default_factory=list)

    @property
    def sets_timers(self) -> bool:
        """Does this agent set durable timers (and so hold a schedule subject and a
        consumer of their firings)?"""
        return "timer_set" in self.produces

    @property
    def readable(self) -> frozenset[str]:
        """Every event type of a case this agent may read."""
        return frozenset(self.consumes) | frozenset(self.produces) | frozenset(self.reads)


def card_digest(card: AgentCard) -> str:
    """sha256 of the card's JSON: what an operator's approval of a card names."""
    return hashlib.sha256(msgspec.json.encode(card)).hexdigest()


class SignedStatement(msgspec.Struct, frozen=True, kw_only=True):
    """A signed document kept as evidence (an enrolment grant, an operator's approval):
    the signature is the signer's over `subject + "\\n" + body`, as for events, so
    anyone holding the signer's public key can check it offline."""

    subject: str
    body_b64: str
    signer: str  # the signer's public nkey
    signature: str

    @property
    def body(self) -> bytes:
        return base64.b64decode(self.body_b64, validate=True)

    @classmethod
    def of(cls, subject: str, body: bytes, signer: str, signature: str) -> SignedStatement:
        return cls(
            subject=subject,
            body_b64=base64.b64encode(body).decode(),
            signer=signer,
            signature=signature,
        )


# The pseudo-subject an operator signs an enrolment grant under (it is never published).
GRANT_SUBJECT = "agent-mesh.enrolment-grant"


class EnrolmentGrant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An operator's one-time permission for one agent to enrol, and the most it may
    claim. Signed by the operator (a `SignedStatement` under GRANT_SUBJECT); the
    registry accepts it once, before `expires_at`, for this agent id and owner, and
    for a card within this scope (a numeric `max_…` limit may be lower, never higher)."""

    grant_id: str
    agent_id: str
    owner: str
    issued_by: str  # the operator's principal id
    expires_at: datetime
    kind: PrincipalKind = "agent"
    roles: list[str] = msgspec.field(default_factory=list)
    consumes: list[str] = msgspec.field(default_factory=list)
    produces: list[str] = msgspec.field(default_factory=list)
    reads: list[str] = msgspec.field(default_factory=list)
    facts: list[str] = msgspec.field(default_factory=list)
    actions: list[ActionGrant] = msgspec.field(default_factory=list)


class CardPeriod(msgspec.Struct, frozen=True, kw_only=True):
    """A card in force from `valid_from` (the broker time its registry event was
    stored) until `valid_until`, with the operator's signature that put it in force.
    `approval` is None only for a change that widened nothing (a new name, a narrower
    scope, a rotated key) and for the mesh's static principals, whose scope comes from
    the principals file."""

    card: AgentCard
    valid_from: datetime
    valid_until: datetime | None = None
    approval: SignedStatement | None = None

    def covers(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_until is None or at < self.valid_until)


class Period(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    end: datetime | None = None  # None: still going on


class AgentRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The registry's current view of one agent (the KV value, and lookup replies)."""

    card: AgentCard  # the card in force (or, before activation, the one registered)
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
    # Every card that was in force, oldest first.
    card_history: list[CardPeriod] = msgspec.field(default_factory=list)
    # A wider card the agent asked for, waiting for an operator's approval; until then
    # `card` stays in force.
    pending_card: AgentCard | None = None

    @property
    def agent_id(self) -> str:
        return self.card.agent_id
