"""Know Your Agent, as pure logic: decide what a registration or a status change means,
and evolve the registry's state from its history. No I/O, no await.

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

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec

from contracts.authorship import APPROVAL_TYPES, DECISION_TYPES, REGISTRY_TYPES
from contracts.cards import (
    GRANT_SUBJECT,
    AgentCard,
    AgentKey,
    AgentRecord,
    AgentStatus,
    CardPeriod,
    EnrolmentGrant,
    Period,
    SignedStatement,
    card_digest,
)
from contracts.catalog import EventCatalog
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
from contracts.subjects import check_token
from mesh.service import SignatureError, verify

StatusTarget = Literal["activate", "suspend", "revoke"]

_grant_decoder = msgspec.json.Decoder(EnrolmentGrant)


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
    # Ids an agent may not take: static principals and the onboarding user share the
    # inbox and user namespace with agents.
    reserved_ids: frozenset[str] = frozenset()
    reserved_keys: frozenset[str] = frozenset()  # the static principals' keys
    operators: Mapping[str, str] = field(default_factory=dict)  # public key -> operator id


@dataclass
class RegistryState:
    records: dict[str, AgentRecord] = field(default_factory=dict)
    key_owner: dict[str, str] = field(default_factory=dict)  # public key -> agent id
    used_grants: dict[str, str] = field(default_factory=dict)  # grant id -> agent id
    sequence: int = 0  # the registry stream sequence applied last

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
    grant: SignedStatement | None = None,
) -> list[Event]:
    """`signer` signed the request; `proven` are keys that also signed it (proofs of
    possession for keys the card adds); `grant` is an operator's enrolment grant."""
    _check_card(card, rules)
    existing = state.records.get(card.agent_id)
    _check_key_ownership(state, card, rules)
    if existing is None:
        if signer not in {k.public_key for k in card.keys}:
            raise Refused(
                f"forged card: signed by {signer}, which is not one of the card's keys "
                f"(a new agent signs its card with its own key)"
            )
        _check_possession(card, set(), proven | {signer})
        if grant is None:
            raise Refused(
                f"agent {card.agent_id} has no enrolment grant: an operator issues one "
                f"(`mesh registry grant {card.agent_id} …`) and the agent presents it"
            )
        enrolment = check_grant(state, grant, card, now, rules)
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
    _check_not_retired(existing, card)
    _check_possession(card, state.current_keys(card.agent_id), proven | {signer})
    return _updated(state, existing, card, now, rules, grant)


def _check_key_ownership(state: RegistryState, card: AgentCard, rules: RegistryRules) -> None:
    for key in card.keys:
        if key.public_key in rules.reserved_keys:
            raise Refused(f"key {key.public_key} belongs to a mesh service or operator")
        owner = state.key_owner.get(key.public_key)
        if owner is not None and owner != card.agent_id:
            raise Refused(f"key {key.public_key} already belongs to agent {owner}")


def _check_not_retired(existing: AgentRecord, card: AgentCard) -> None:
    retired = {k.public_key: k for k in existing.key_history if k.valid_until is not None}
    for key in card.keys:
        old = retired.get(key.public_key)
        if old is not None:
            assert old.valid_until is not None
            raise Refused(
                f"key {key.public_key} of {card.agent_id} was retired at "
                f"{old.valid_until.isoformat()}; a retired key never comes back"
            )


def _check_possession(card: AgentCard, current: set[str], proven: frozenset[str]) -> None:
    unproven = sorted({k.public_key for k in card.keys} - current - proven)
    if unproven:
        raise Refused(
            f"no proof of possession for key(s) {unproven}: every key a card adds must sign it too"
        )


def read_grant(statement: SignedStatement) -> EnrolmentGrant:
    """The grant a signed statement holds (its signature is checked by check_grant)."""
    if statement.subject != GRANT_SUBJECT:
        raise Refused(f"not an enrolment grant: signed under {statement.subject!r}")
    try:
        return _grant_decoder.decode(statement.body)
    except (msgspec.DecodeError, ValueError) as exc:
        raise Refused(f"unreadable enrolment grant: {exc}") from None


def grant_id_of(statement: SignedStatement | None) -> str | None:
    if statement is None or statement.subject != GRANT_SUBJECT:
        return None
    try:
        return _grant_decoder.decode(statement.body).grant_id
    except (msgspec.DecodeError, ValueError):
        return None


def check_grant(
    state: RegistryState,
    statement: SignedStatement,
    card: AgentCard,
    now: datetime,
    rules: RegistryRules,
) -> EnrolmentGrant:
    """The grant, if an operator signed it for this very agent and a card within it."""
    operator = rules.operators.get(statement.signer)
    if operator is None:
        raise Refused(f"enrolment grant signed by {statement.signer}, which is not an operator")
    try:
        verify(statement.signer, statement.subject, statement.body, statement.signature)
    except SignatureError as exc:
        raise Refused(f"enrolment grant: {exc.reason}") from None
    except ValueError as exc:  # a body that is not base64
        raise Refused(f"unreadable enrolment grant: {exc}") from None
    grant = read_grant(statement)
    problems = []
    if grant.issued_by != operator:
        problems.append(f"names {grant.issued_by} as issuer but {operator} signed it")
    if grant.expires_at <= now:
        problems.append(f"expired at {grant.expires_at.isoformat()}")
    used_by = state.used_grants.get(grant.grant_id)
    if used_by is not None:
        problems.append(f"was already used (by {used_by}); a grant is good for one enrolment")
    if grant.agent_id != card.agent_id:
        problems.append(f"is for agent {grant.agent_id}, not {card.agent_id}")
    if grant.owner != card.owner:
        problems.append(f"is for owner {grant.owner!r}, not {card.owner!r}")
    problems += beyond_grant(card, grant)
    if problems:
        raise Refused(f"enrolment grant {grant.grant_id} " + "; ".join(problems))
    return grant


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
    _check_key_ownership(state, pending, rules)
    _check_not_retired(record, pending)
    widened, other = scope_changes(record.card, pending)
    return [_card_updated(record, pending, widened + other, now, rules, approval)]


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
    for event_type in (*card.consumes, *card.produces, *card.reads):
        if event_type not in rules.catalog:
            problems.append(f"unknown event type {event_type!r}")
    produced = set(card.produces)
    closed = produced & {*DECISION_TYPES, *REGISTRY_TYPES}
    if closed:
        problems.append(
            f"no card may produce {sorted(closed)}: "
            "decisions come from the policy service, history from the registry"
        )
    if produced & set(APPROVAL_TYPES) and (card.kind != "human" or "approver" not in card.roles):
        problems.append("only a human with the approver role may produce approvals")
    if not card.keys:
        problems.append("the card lists no key")
    for key in card.keys:
        if not _is_user_public_key(key.public_key):
            problems.append(f"{key.public_key!r} is not a user public nkey")
    listed = [k.public_key for k in card.keys]
    if len(set(listed)) != len(listed):
        problems.append("a key is listed twice")
    problems += _bounds(card)
    for fact in card.facts:
        try:
            check_token(fact, "fact")
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise Refused("invalid card: " + "; ".join(problems))


# A card is a small document: everything about an agent that every reader holds (and
# the registry answers in one reply) must stay small whatever an agent writes.
MAX_CARD_BYTES = 4 * 1024
MAX_CARD_PERIODS = 32  # cards in force over an agent's life; re-enrol beyond that
_TEXT_LIMITS = {"name": 200, "version": 64, "owner": 200, "purpose": 1000}
_LIST_LIMITS = {"keys": 4, "roles": 16, "facts": 32, "actions": 16}


def _bounds(card: AgentCard) -> list[str]:
    problems = [
        f"{name} is longer than {limit} characters"
        for name, limit in _TEXT_LIMITS.items()
        if len(getattr(card, name)) > limit
    ]
    problems += [
        f"more than {limit} {name}"
        for name, limit in _LIST_LIMITS.items()
        if len(getattr(card, name)) > limit
    ]
    for what in ("consumes", "produces", "reads", "roles", "facts"):
        values = getattr(card, what)
        if len(set(values)) != len(values):
            problems.append(f"{what} lists an entry twice")
    size = len(msgspec.json.encode(card))
    if size > MAX_CARD_BYTES:
        problems.append(f"the card is {size} bytes; at most {MAX_CARD_BYTES}")
    return problems


def _is_user_public_key(value: str) -> bool:
    return len(value) == 56 and value.startswith("U") and value.isalnum() and value.isupper()


def _normalised(card: AgentCard) -> AgentCard:
    """The registry decides status and key validity; the card only names the keys."""
    keys = [AgentKey(public_key=k.public_key, valid_from=k.valid_from) for k in card.keys]
    return msgspec.structs.replace(card, status="registered", keys=keys)


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
            payload=AgentRegisteredPayload(card=_normalised(card), grant=grant),
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
    old, new = existing.card, _normalised(card)
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
        check_grant(state, grant, new, now, rules)
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


# ---------------------------------------------------------------------------- evolve


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
