"""Comparing scopes (pure): does a card widen another, does it fit within a grant?

The registry decides with these, and the audit verifier re-checks the registry's
history with the very same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from contracts.cards import AgentCard, EnrolmentGrant

# The parts of a card that are scope: adding to any of them widens it.
SCOPE_LISTS = ("consumes", "produces", "reads", "facts", "roles")


def grant_problems(
    grant: EnrolmentGrant,
    card: AgentCard,
    *,
    signed_by: str,
    at: datetime,
    used_by: str | None,
) -> list[str]:
    """Why `grant`, signed by operator `signed_by`, cannot put `card` in force at `at`
    (empty: it can). `used_by`: the agent that already enrolled with it, if any. The one
    home of the rule: the registry refuses an enrolment with it, and the auditor checks
    every card in force against it."""
    problems = []
    if grant.issued_by != signed_by:
        problems.append(f"names {grant.issued_by} as issuer but {signed_by} signed it")
    if grant.expires_at <= at:
        problems.append(f"expired at {grant.expires_at.isoformat()}")
    if used_by is not None:
        problems.append(f"was already used (by {used_by}); a grant is good for one enrolment")
    if grant.agent_id != card.agent_id:
        problems.append(f"is for agent {grant.agent_id}, not {card.agent_id}")
    if grant.owner != card.owner:
        problems.append(f"is for owner {grant.owner!r}, not {card.owner!r}")
    return problems + beyond_grant(card, grant)


def beyond_grant(card: AgentCard, grant: EnrolmentGrant) -> list[str]:
    """Where the card claims more than the grant allows (empty: it fits)."""
    problems = []
    if card.kind != grant.kind:
        problems.append(f"kind {card.kind} is not the granted {grant.kind}")
    for what in SCOPE_LISTS:
        extra = sorted(set(getattr(card, what)) - set(getattr(grant, what)))
        if extra:
            problems.append(f"{what} {extra} are not granted")
    granted = {a.action_type: a.limits for a in grant.actions}
    for action in card.actions:
        limits = granted.get(action.action_type)
        if limits is None:
            problems.append(f"action {action.action_type} is not granted")
            continue
        for name, ceiling in sorted(limits.items()):
            claimed = action.limits.get(name)
            if claimed is None:
                problems.append(f"{action.action_type} drops the granted limit {name}={ceiling}")
            elif name.startswith("max_") and _number(ceiling) and _number(claimed):
                if claimed > ceiling:
                    problems.append(f"{action.action_type} {name}={claimed} exceeds {ceiling}")
            elif claimed != ceiling:
                problems.append(f"{action.action_type} {name}={claimed!r} is not {ceiling!r}")
    return problems


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def scope_changes(old: AgentCard, new: AgentCard) -> tuple[list[str], list[str]]:
    """(widening changes, other changes), each readable by a person."""
    widened: list[str] = []
    other: list[str] = []

    def compare(what: str, before: Iterable[str], after: Iterable[str]) -> None:
        added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
        if added:
            widened.append(f"{what} added {added}")
        if removed:
            other.append(f"{what} removed {removed}")

    for what in SCOPE_LISTS:
        compare(what, getattr(old, what), getattr(new, what))
    old_actions = {a.action_type: a.limits for a in old.actions}
    new_actions = {a.action_type: a.limits for a in new.actions}
    compare("actions", old_actions, new_actions)
    for action in sorted(set(old_actions) & set(new_actions)):
        if old_actions[action] != new_actions[action]:
            # Any change of a limit may widen it (a higher amount, a new currency).
            widened.append(
                f"limits of {action} changed {old_actions[action]} -> {new_actions[action]}"
            )
    if old.kind != new.kind:
        widened.append(f"kind changed {old.kind} -> {new.kind}")
    if old.owner != new.owner:
        # Who answers for an agent is what its grant bound and what policies see.
        widened.append(f"owner changed {old.owner!r} -> {new.owner!r}")
    for name in ("name", "purpose", "version"):
        if getattr(old, name) != getattr(new, name):
            other.append(f"{name} changed {getattr(old, name)!r} -> {getattr(new, name)!r}")
    return widened, other
