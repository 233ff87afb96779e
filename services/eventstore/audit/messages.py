"""Every message of the bundle, checked as the projector checks it: its signature
verifies against its signer's key, and that key belonged to the actor, was valid (not
revoked, not suspended), and the actor's card then produced this type of event — all
at the time the store sealed as its storage time (a message's own `stored_at` is under
no signature). A message the bundle re-timed or put out of order is named too."""

from __future__ import annotations

from datetime import datetime

from contracts.audit_bundle import AuditBundle
from contracts.subjects import Subjects
from mesh.service import KeyDirectory
from services.eventstore.audit.report import Report, where
from services.eventstore.checking import MessageChecker
from services.eventstore.domain import LogRecord


def checked_messages(
    bundle: AuditBundle, keys: KeyDirectory, sealed_times: dict[int, datetime], report: Report
) -> list[LogRecord]:
    """The bundle's messages as records, each flagged with what failed (never dropped,
    unless its body cannot even be read)."""
    checker = MessageChecker(Subjects(bundle.subject_root), keys)
    records: list[LogRecord] = []
    previous = 0
    for message in bundle.events:
        try:
            body = message.body
        except ValueError:
            report.add("integrity", f"sequence {message.sequence}", "body is not base64")
            continue
        sealed = sealed_times.get(message.sequence)
        record = checker.check(
            message.sequence, message.subject, body, message.headers, sealed or message.stored_at
        )
        if sealed is not None and sealed != message.stored_at:
            report.add(
                "integrity",
                where(record),
                f"stored at {message.stored_at.isoformat()} says the bundle, but the seal "
                f"says {sealed.isoformat()}: its time was moved",
            )
        if record.problem is not None:
            report.add("signature", where(record), record.problem)
        if message.sequence <= previous:
            report.add(
                "integrity",
                where(record),
                f"out of order: comes after sequence {previous} in the bundle",
            )
        previous = max(previous, message.sequence)
        records.append(record)
    return records
