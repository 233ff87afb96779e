"""Case facts, and who may state them (pure).

A fact is a key of a completed step's `evidence` (say `fraud_score`). It counts only
when the agent that stated it held, when its event was stored, a card naming it
authoritative for that fact (`AgentCard.facts`); anyone else's say-so is ignored, so a
compromised peer cannot supply the facts a decision rests on. Of several authoritative
statements of one fact the latest counts (an authority may correct itself). The
requester's own statements never count for its own request.

The policy service, the SDK (`HandlerContext.facts()`) and the audit verifier all take
facts through `authoritative_facts` (and earlier actions through `prior_actions`), so
a decision's recorded inputs can be re-derived from the log by anyone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contracts.envelope import Event
from contracts.events.actions import (
    ActionApproved,
    ActionDenied,
    ActionRequested,
    ApprovalExpired,
    ApprovalRequired,
    FactSource,
)
from contracts.events.case import CaseStepCompleted

# (actor, fact, when stored) -> was the actor's card then authoritative for the fact?
Authority = Callable[[str, str, datetime], bool]


@dataclass(frozen=True)
class Statement:
    """A completed step's evidence, as stored (its signature already checked)."""

    sequence: int
    event_id: str
    actor: str
    stored_at: datetime
    evidence: dict[str, Any]

    @classmethod
    def of(cls, sequence: int, stored_at: datetime, step: CaseStepCompleted) -> Statement:
        return cls(
            sequence=sequence,
            event_id=step.event_id,
            actor=step.actor,
            stored_at=stored_at,
            evidence=step.payload.evidence,
        )


def authoritative_facts(
    statements: Iterable[Statement],
    authority: Authority,
    *,
    considered: Collection[str] | None = None,
    before: int | None = None,
    excluded_actor: str | None = None,
) -> dict[str, FactSource]:
    """The facts the log establishes: for each fact (of `considered`, or all), the
    latest statement by its authority, stored before sequence `before`, by anyone but
    `excluded_actor`. In log order, so the result does not depend on who asks when."""
    facts: dict[str, FactSource] = {}
    for statement in sorted(statements, key=lambda s: s.sequence):
        if before is not None and statement.sequence >= before:
            continue
        if statement.actor == excluded_actor:
            continue
        for name, value in statement.evidence.items():
            if considered is not None and name not in considered:
                continue
            if not authority(statement.actor, name, statement.stored_at):
                continue
            facts[name] = FactSource(
                name=name,
                value=value,
                event_id=statement.event_id,
                actor=statement.actor,
                sequence=statement.sequence,
            )
    return facts


def prior_actions(events: Iterable[tuple[int, Event]], before: int) -> list[str]:
    """Action types of a case's requests stored before sequence `before` that policy
    approved or sent to a human, and did not deny or let expire since — what "one
    payout per claim" is judged by. `events` are (sequence, event) in any order, each
    already verified (only the policy service's card produces decisions)."""
    types: dict[str, str] = {}
    live: dict[str, bool] = {}
    for sequence, event in sorted(events, key=lambda item: item[0]):
        if sequence >= before:
            continue
        if isinstance(event, ActionRequested):
            types[event.event_id] = event.payload.action_type
        elif isinstance(event, ActionApproved | ApprovalRequired):
            live[event.payload.request_id] = True
        elif isinstance(event, ActionDenied | ApprovalExpired):
            live[event.payload.request_id] = False
    return sorted({types[r] for r, alive in live.items() if alive and r in types})
