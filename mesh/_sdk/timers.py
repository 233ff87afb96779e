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
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from contracts.events.timers import MAX_TIMER_DATA_BYTES, TimerSetPayload
from contracts.subjects import check_token
from mesh.errors import PermanentError

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
    encoded = msgspec.json.encode(data or {})
    if len(encoded) > MAX_TIMER_DATA_BYTES:
        raise PermanentError(
            f"timer {name}: data is {len(encoded)} bytes, more than {MAX_TIMER_DATA_BYTES}"
        )
    real = now.astimezone(UTC) + timedelta(seconds=delay / clock_rate)
    due = datetime.fromtimestamp(math.ceil(real.timestamp()), UTC)
    return TimerSetPayload(
        name=name, due_at=due, delay_seconds=delay, clock_rate=clock_rate, data=data or {}
    )


def schedule_header(due_at: datetime) -> str:
    """The `Nats-Schedule` value that fires once at `due_at` (ADR-51, RFC 3339 UTC)."""
    return "@at " + due_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
