"""A case's timers (pure): each `timer_fired` answers a `timer_set` of the same agent in
the same case, was stored no earlier than its due time, is the only firing of it and
came after no cancellation of it; a cancellation names a timer its own agent set.

A timer set under a compressed clock (a demo's or a test's; `MESH_CLOCK_RATE`) is no
violation, but it is no real delay either: the report notes each one.
"""

from __future__ import annotations

from collections.abc import Callable

from contracts.events.timers import TimerCancelled, TimerFired, TimerSet
from services.eventstore.audit.case_state import CaseSoFar, Finding, TimerSeen
from services.eventstore.domain import LogRecord

Note = Callable[[LogRecord, str], None]


def check_timer(
    case: CaseSoFar,
    record: LogRecord,
    event: TimerSet | TimerCancelled | TimerFired,
    found: Finding,
    note: Note,
) -> None:
    if isinstance(event, TimerSet):
        case.timers[event.event_id] = TimerSeen(record, event)
        if event.payload.clock_rate != 1:
            note(
                record,
                f"timer {event.payload.name} ran on a compressed clock (rate "
                f"{event.payload.clock_rate:g}): {event.payload.delay_seconds:g}s of business "
                "time took less in fact; a demo's or a test's, not a real mesh's",
            )
        return
    timer_id = event.payload.timer_id
    seen = case.timers.get(timer_id)
    if seen is None or seen.event.actor != event.actor:
        found(record, f"names timer {timer_id}, which {event.actor} did not set in this case")
        return
    if isinstance(event, TimerCancelled):
        seen.cancelled = seen.cancelled or record
        return
    due = seen.event.payload.due_at
    if event.causation_id != timer_id or event.payload.due_at != due:
        found(record, f"does not restate timer {timer_id} (its cause and due time)")
    if record.stored_at < due:
        found(
            record,
            f"fires timer {timer_id} at {record.stored_at.isoformat()}, before its due time "
            f"{due.isoformat()}",
        )
    if seen.fired is not None:
        found(record, f"fires timer {timer_id} again (fired at sequence {seen.fired.sequence})")
    elif seen.cancelled is not None:
        found(
            record,
            f"fires timer {timer_id}, cancelled at sequence {seen.cancelled.sequence}",
        )
    seen.fired = seen.fired or record
