"""What a verification finds: violations, each naming the message, page or principal
it is about, gathered in one report."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.audit_bundle import ManifestEntry
from services.eventstore.domain import LogRecord


@dataclass(frozen=True)
class Violation:
    check: str  # signature / integrity / policy / enrolment
    where: str  # which message: sequence, event id, type, case
    problem: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.where}: {self.problem}"


@dataclass
class Report:
    scope: str
    events: int = 0
    cases: int = 0
    checkpoints: int = 0
    tree_size: int = 0
    violations: list[Violation] = field(default_factory=list)
    # What an auditor should know that is no violation (a timer on a compressed clock).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, check: str, where: str, problem: str) -> None:
        self.violations.append(Violation(check, where, problem))


def where(record: LogRecord) -> str:
    """A message of the log, named as a reader finds it again."""
    if record.event is None:
        return f"sequence {record.sequence} (unreadable, on {record.subject})"
    return (
        f"sequence {record.sequence} (event {record.event.event_id}, "
        f"{record.event.event_name()} of case {record.case_id} by {record.event.actor})"
    )


def entry_where(entry: ManifestEntry) -> str:
    """A message the seal names, which the bundle may lack."""
    return f"sequence {entry.sequence} (event {entry.event_id} of case {entry.case_id})"
