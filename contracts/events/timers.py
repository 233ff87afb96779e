"""Durable timers: an agent asks to be woken in a case at a time, and the log says so.

    timer_set        the agent's request: wake me in this case, by this name, at due_at
    timer_cancelled  the agent's withdrawal of a timer it set, with its reason
    timer_fired      the wake-up, written by the same agent once the broker fired it

The broker keeps the schedule (a JetStream message schedule; see
`mesh._runtime.timers`); the log keeps the record. A timer fires at most once, never
before its due time and never after it was cancelled: the log shows all three, and
`mesh audit verify` checks them. A timer's id is the event id of its `timer_set`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from contracts.envelope import Event, UtcTime

# What a timer may carry back to its handler: a little context, not a payload store.
MAX_TIMER_DATA_BYTES = 4096


class TimerSetPayload(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # which of the agent's timer handlers it wakes (a subject-safe token)
    due_at: UtcTime  # when the broker fires it (UTC, whole seconds)
    # When it is due in business time: set time + delay (v2). Equal to `due_at` on a real
    # mesh, up to rounding; on a compressed clock, the date a person means ("in 14 days").
    business_due_at: UtcTime
    # The business delay it stands for, in seconds: `due_at` is that delay divided by
    # `clock_rate`, which is 1 on any real mesh (a demo or a test may compress time).
    delay_seconds: float
    clock_rate: float = 1.0
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class TimerSet(Event, frozen=True, kw_only=True, tag="timer_set"):
    """v2 added `business_due_at` (`timer_set_v1_to_v2` derives it for v1 events)."""

    schema_version: int = 2
    payload: TimerSetPayload


def timer_set_v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """A v1 timer_set's business due time: when it was set plus the delay it stood for."""
    payload = dict(raw.get("payload") or {})
    set_at = datetime.fromisoformat(str(raw["occurred_at"]).replace("Z", "+00:00"))
    delay = float(payload.get("delay_seconds", 0))
    payload["business_due_at"] = (set_at + timedelta(seconds=delay)).isoformat()
    return {**raw, "payload": payload}


class TimerCancelledPayload(msgspec.Struct, frozen=True, kw_only=True):
    timer_id: str  # the event id of the timer_set it withdraws
    reason: str = ""


class TimerCancelled(Event, frozen=True, kw_only=True, tag="timer_cancelled"):
    payload: TimerCancelledPayload


class TimerFiredPayload(msgspec.Struct, frozen=True, kw_only=True):
    timer_id: str  # the event id of the timer_set it fires (also its causation_id)
    name: str
    due_at: UtcTime
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class TimerFired(Event, frozen=True, kw_only=True, tag="timer_fired"):
    payload: TimerFiredPayload


TIMER_TYPES = frozenset({"timer_set", "timer_cancelled", "timer_fired"})
