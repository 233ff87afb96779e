"""Durable timers as a handler sees them (pure): when a timer is due, and which of the
agent's timer handlers a firing wakes.

    @agent.on_timer("police_report_deadline")
    async def deadline(fired: TimerFired, ctx: HandlerContext) -> None: ...

    timer_id = await ctx.schedule("police_report_deadline", after=timedelta(days=14))

The broker holds the schedule and the log holds the record (`contracts.events.timers`;
the runtime's side is `mesh._runtime.timers`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from contracts.events.timers import (
    MAX_TIMER_DATA_BYTES,
    TimerCancelled,
    TimerFired,
    TimerSet,
    TimerSetPayload,
)
from contracts.subjects import check_token
from mesh._broker.stored_messages import StoredEvent
from mesh.errors import PermanentError

# A timer's data is a little context: this deep at most (every reader stores it).
MAX_TIMER_DATA_DEPTH = 16
# Handlers of a timer-setting agent's card: what its timers need on it.
TIMER_PRODUCES = ("timer_set", "timer_fired")
TIMER_CONSUMES = ("timer_fired",)


def timer_payload(
    name: str,
    *,
    now: datetime,
    after: timedelta | None,
    at: datetime | None,
    clock_rate: float,
    data: dict[str, Any] | None,
) -> TimerSetPayload:
    """The timer_set payload for a timer `after` a business delay or `at` a business
    time (exactly one). Under a clock rate r > 1 (demo, tests) the broker fires after
    delay / r. `due_at` is rounded up to the whole second the broker schedules by, so
    the timer never fires before the delay asked for."""
    check_token(name, "timer name")
    if (after is None) == (at is None):
        raise PermanentError(f"timer {name}: give exactly one of after= and at=")
    if at is not None:
        if at.tzinfo is None:
            raise PermanentError(f"timer {name}: at= must carry a time zone")
        after = at - now
    assert after is not None
    delay = max(after.total_seconds(), 0.0)
    if _depth(data or {}) > MAX_TIMER_DATA_DEPTH:
        raise PermanentError(f"timer {name}: data nests deeper than {MAX_TIMER_DATA_DEPTH}")
    encoded = msgspec.json.encode(data or {})
    if len(encoded) > MAX_TIMER_DATA_BYTES:
        raise PermanentError(
            f"timer {name}: data is {len(encoded)} bytes, more than {MAX_TIMER_DATA_BYTES}"
        )
    real = now.astimezone(UTC) + timedelta(seconds=delay / clock_rate)
    due = datetime.fromtimestamp(math.ceil(real.timestamp()), UTC)
    return TimerSetPayload(
        name=name,
        due_at=due,
        business_due_at=now.astimezone(UTC) + timedelta(seconds=delay),
        delay_seconds=delay,
        clock_rate=clock_rate,
        data=data or {},
    )


def schedule_header(due_at: datetime) -> str:
    """The `Nats-Schedule` value that fires once at `due_at` (ADR-51, RFC 3339 UTC)."""
    return "@at " + due_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _depth(value: Any, limit: int = MAX_TIMER_DATA_DEPTH + 1) -> int:
    """How deep `value` nests (counted up to `limit`: deeper is refused anyway)."""
    if limit <= 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


@dataclass(frozen=True)
class TimerRecord:
    """What one case's log says of one timer of one agent."""

    set: TimerSet | None = None
    fired_at: int | None = None  # the sequence of its timer_fired
    cancelled_at: int | None = None  # the sequence of its timer_cancelled


def timer_record(history: Iterable[StoredEvent], agent_id: str, timer_id: str) -> TimerRecord:
    """The log's account of a timer: only the setting agent's own events count."""
    found = TimerRecord()
    for stored in history:
        event = stored.event
        if event.actor != agent_id:
            continue
        if isinstance(event, TimerSet) and event.event_id == timer_id:
            found = TimerRecord(event, found.fired_at, found.cancelled_at)
        elif isinstance(event, TimerFired) and event.payload.timer_id == timer_id:
            found = TimerRecord(found.set, found.fired_at or stored.sequence, found.cancelled_at)
        elif isinstance(event, TimerCancelled) and event.payload.timer_id == timer_id:
            found = TimerRecord(found.set, found.fired_at, found.cancelled_at or stored.sequence)
    return found
