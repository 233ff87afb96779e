"""Who may state a fact (pure): a step stating a fact that another agent is the
authority for speaks out of turn. Readers ignore it; its presence shows someone tried
to speak for another, so it is named."""

from __future__ import annotations

from contracts.events.case import CaseStepCompleted
from mesh.service import KeyDirectory
from services.eventstore.audit.case_state import Finding
from services.eventstore.domain import LogRecord


def check_statement(
    keys: KeyDirectory, record: LogRecord, step: CaseStepCompleted, found: Finding
) -> None:
    for fact in sorted(step.payload.evidence):
        if keys.authoritative(step.actor, fact, record.stored_at):
            continue
        others = keys.authorities(fact, record.stored_at)
        if others:
            found(
                record,
                f"states fact {fact}, for which {', '.join(others)} (not {step.actor}) "
                "is the authority: ignored by every reader",
            )
