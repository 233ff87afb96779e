"""A case's timers and waits (pure): each `timer_fired` answers a `timer_set` of the same
agent in the same case, was stored no earlier than its due time, is the only firing of
it and came after no cancellation of it; a cancellation names a timer its own agent set.
A `wait_ended` ends, once, a wait its own agent began in the case; one that says the
deadline passed cites the firing of that wait's timer.

A timer's due time is no earlier than when its `timer_set` was stored plus the delay it
stands for (divided by its clock rate; DUE_SLACK for the setter's clock and the time
between computing and storing it): a firing is judged against that, not against the
setter's word alone. A clock rate is at least 1, and other than 1 only where the
auditor allows a compressed clock (a demo's or a test's, `MESH_CLOCK_RATE`): then each
such timer is noted; on a real mesh it is a violation — its delays were not real.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from contracts.events.case import CaseWaiting, WaitEnded
from contracts.events.timers import TimerCancelled, TimerFired, TimerSet
from services.eventstore.audit.case_state import CaseSoFar, Finding, TimerSeen, WaitSeen
from services.eventstore.domain import LogRecord

Note = Callable[[LogRecord, str], None]
DUE_SLACK = timedelta(seconds=60)


def check_timer(
    case: CaseSoFar,
    record: LogRecord,
    event: TimerSet | TimerCancelled | TimerFired,
    found: Finding,
    note: Note,
    compressed_clock_allowed: bool = False,
) -> None:
    if isinstance(event, TimerSet):
        case.timers[event.event_id] = TimerSeen(record, event)
        _check_due_time(record, event, found)
        p = event.payload
        if p.clock_rate != 1:
            remark = (
                f"timer {p.name} ran on a compressed clock (rate {p.clock_rate:g}): "
                f"{p.delay_seconds:g}s of business time took less in fact"
            )
            if compressed_clock_allowed:
                note(record, f"{remark}; a demo's or a test's")
            else:
                found(record, f"{remark}: on a real mesh, time is real")
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


def _check_due_time(record: LogRecord, event: TimerSet, found: Finding) -> None:
    p = event.payload
    if p.clock_rate < 1 or p.delay_seconds < 0:
        found(
            record,
            f"sets timer {p.name} with clock rate {p.clock_rate:g}, delay {p.delay_seconds:g}s",
        )
        return
    earliest = record.stored_at + timedelta(seconds=p.delay_seconds / p.clock_rate) - DUE_SLACK
    if p.due_at < earliest:
        found(
            record,
            f"sets timer {p.name} due {p.due_at.isoformat()}, earlier than its delay of "
            f"{p.delay_seconds:g}s allows (stored {record.stored_at.isoformat()})",
        )


def check_wait(
    case: CaseSoFar, record: LogRecord, event: CaseWaiting | WaitEnded, found: Finding
) -> None:
    if isinstance(event, CaseWaiting):
        case.waits[event.event_id] = WaitSeen(record, event)
        return
    seen = case.waits.get(event.payload.wait_id)
    if seen is None or seen.event.actor != event.actor:
        found(record, f"ends wait {event.payload.wait_id}, which {event.actor} did not begin")
        return
    if seen.ended is not None:
        found(
            record, f"ends wait {event.payload.wait_id} again (at sequence {seen.ended.sequence})"
        )
    seen.ended = seen.ended or record
    if event.payload.outcome == "deadline_passed":
        timer = case.timers.get(seen.event.payload.timer_id)
        fired = timer.fired if timer is not None else None
        if fired is None or fired.event is None or fired.event.event_id != event.payload.by:
            found(
                record,
                f"says the deadline of wait {event.payload.wait_id} passed, but cites no "
                "firing of its timer",
            )
