"""One event id names one event in the whole log: a second message under an id (a
replay under a fresh Nats-Msg-Id, or another event reusing it, in this case or
another) is named, and two different events under one id above all."""

from __future__ import annotations

from contracts.audit_bundle import ManifestEntry
from services.eventstore.audit.report import Report, where
from services.eventstore.domain import LogRecord


def check_event_ids(records: list[LogRecord], entries: list[ManifestEntry], report: Report) -> None:
    first: dict[str, LogRecord] = {}
    for record in records:
        if record.event is None:
            continue
        earlier = first.setdefault(record.event.event_id, record)
        if earlier is record:
            continue
        same = earlier.body == record.body and earlier.case_id == record.case_id
        report.add(
            "integrity",
            where(record),
            f"a second message under event id {record.event.event_id} (first at sequence "
            f"{earlier.sequence}, case {earlier.case_id}): "
            + ("a replayed copy" if same else "a different event reusing the id"),
        )
    sealed = {e.sequence: e for e in entries}
    in_bundle = {r.sequence for r in records}
    for record in records:
        entry = sealed.get(record.sequence)
        if entry is None or entry.duplicate_of is None or entry.duplicate_of in in_bundle:
            continue  # named above when both copies are here
        report.add(
            "integrity",
            where(record),
            f"the store sealed it as a second message under its event id (first at "
            f"sequence {entry.duplicate_of}, outside this bundle)",
        )
