"""What a card must meet before the registry records it (pure): a known owner, only
event types the contracts define and none reserved to another author, well-formed keys
that belong to this agent alone, proven by signing, and bounded sizes. No I/O, no await."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

from contracts.authorship import APPROVAL_TYPES, DECISION_TYPES, INGRESS_TYPES, REGISTRY_TYPES
from contracts.cards import AgentCard, AgentKey, AgentRecord
from contracts.catalog import CATALOG, EventCatalog
from contracts.delegation import DELEGATE_ROLE
from contracts.subjects import check_token
from mesh.service import ONBOARDING_ID, Refused, StaticPrincipal
from services.registry.state import RegistryState


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


def rules_for(
    registry_id: str, known_owners: Iterable[str], principals: list[StaticPrincipal]
) -> RegistryRules:
    """The rules in force with these static principals."""
    return RegistryRules(
        registry_id=registry_id,
        catalog=CATALOG,
        known_owners=frozenset(known_owners),
        # A removed principal's name and key stay taken: what it signed still
        # verifies as its own.
        reserved_ids=frozenset({ONBOARDING_ID, *(p.name for p in principals)}),
        reserved_keys=frozenset(p.public_key for p in principals),
        operators={p.public_key: p.name for p in principals if p.role == "operator" and p.active},
    )


def vetted(
    principals: list[StaticPrincipal], state: RegistryState
) -> tuple[list[StaticPrincipal], list[tuple[str, str]]]:
    """The principals file's entries minus those that would take an agent's name or any
    key an agent ever held (its broker user, its inbox, its signatures): an operator's
    mistake, or a hostile team handing over an agent's public key as its own. The agent
    keeps what is its. Returns those kept, and each name dropped with what it would
    have taken."""
    names = set(state.records)
    keys = {key.public_key for r in state.records.values() for key in r.key_history}
    seen: set[str] = set()
    kept = []
    dropped: list[tuple[str, str]] = []
    for principal in principals:
        clash = (
            "an agent's id"
            if principal.name in names or principal.name == ONBOARDING_ID
            else "an agent's key"
            if principal.public_key in keys
            else "another principal's name"
            if principal.name in seen
            else None
        )
        if clash is not None:
            dropped.append((principal.name, clash))
            continue
        seen.add(principal.name)
        kept.append(principal)
    return kept, dropped


def check_card(card: AgentCard, rules: RegistryRules) -> None:
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
    closed = produced & {*DECISION_TYPES, *REGISTRY_TYPES, *INGRESS_TYPES}
    if closed:
        problems.append(
            f"no card may produce {sorted(closed)}: decisions come from the policy "
            "service, history from the registry, what outside systems add from the ingress"
        )
    if produced & set(APPROVAL_TYPES) and not (
        (card.kind == "human" and "approver" in card.roles)
        or (card.kind == "agent" and DELEGATE_ROLE in card.roles)
    ):
        problems.append(
            "only a human with the approver role, or an agent with the role "
            f"{DELEGATE_ROLE!r} (deciding for a person under a delegation), produces approvals"
        )
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


# A card is a small document: everything about an agent that every reader holds (and
# the registry answers in one reply) must stay small whatever an agent writes.
MAX_CARD_BYTES = 4 * 1024
MAX_CARD_PERIODS = 32  # cards in force over an agent's life; re-enrol beyond that
_TEXT_LIMITS = {"name": 200, "version": 64, "owner": 200, "purpose": 1000}
MAX_CARD_KEYS = 4
_LIST_LIMITS = {"keys": MAX_CARD_KEYS, "roles": 16, "facts": 32, "actions": 16}


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


def check_key_ownership(state: RegistryState, card: AgentCard, rules: RegistryRules) -> None:
    for key in card.keys:
        if key.public_key in rules.reserved_keys:
            raise Refused(f"key {key.public_key} belongs to a mesh service or operator")
        owner = state.key_owner.get(key.public_key)
        if owner is not None and owner != card.agent_id:
            raise Refused(f"key {key.public_key} already belongs to agent {owner}")


def check_not_retired(existing: AgentRecord, card: AgentCard) -> None:
    retired = {k.public_key: k for k in existing.key_history if k.valid_until is not None}
    for key in card.keys:
        old = retired.get(key.public_key)
        if old is not None:
            assert old.valid_until is not None
            raise Refused(
                f"key {key.public_key} of {card.agent_id} was retired at "
                f"{old.valid_until.isoformat()}; a retired key never comes back"
            )


def check_possession(card: AgentCard, current: set[str], proven: frozenset[str]) -> None:
    unproven = sorted({k.public_key for k in card.keys} - current - proven)
    if unproven:
        raise Refused(
            f"no proof of possession for key(s) {unproven}: every key a card adds must sign it too"
        )


def normalised(card: AgentCard) -> AgentCard:
    """The registry decides status and key validity; the card only names the keys."""
    keys = [AgentKey(public_key=k.public_key, valid_from=k.valid_from) for k in card.keys]
    return msgspec.structs.replace(card, status="registered", keys=keys)
