"""Case facts, and who may state them (pure).

A fact is a key of a completed step's `evidence` (say `fraud_score`), or of the data a
case was opened with (say the claim's `amount_cents` and `payee_account`, whose
authority is the ingress: it states what the outside system sent). It counts only
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
from contracts.events.actions import ActionRequested, FactSource
from contracts.events.case import CaseOpened, CaseStepCompleted

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
    def of(cls, sequence: int, stored_at: datetime, event: Event) -> Statement | None:
        """What an event states as facts: a completed step its evidence, a case's
        opening the data the outside system sent (the ingress is their authority);
        None for an event that states no facts."""
        match event:
            case CaseStepCompleted(payload=step):
                evidence = step.evidence
            case CaseOpened(payload=opening):
                evidence = opening.data
            case _:
                return None
        return cls(
            sequence=sequence,
            event_id=event.event_id,
            actor=event.actor,
            stored_at=stored_at,
            evidence=evidence,
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
    """Action types already requested in a case before sequence `before`, whatever
    became of those requests (approved, waiting, denied, rejected, expired): what "one
    payout per claim" is judged by, so that neither a step firing again nor a smaller
    second request after a refusal gets a second answer. `events` are (sequence,
    event) in any order, each already verified."""
    return sorted(
        {
            event.payload.action_type
            for sequence, event in events
            if sequence < before and isinstance(event, ActionRequested)
        }
    )
