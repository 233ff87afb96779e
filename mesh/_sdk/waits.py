"""Waiting for evidence, as a handler sees it (pure): which waits of an agent are open
in a case, from the case's log.

    wait_id = await ctx.wait_for("police_report", after=timedelta(days=14), step="intake")
    ...
    wait = (await ctx.open_waits()).get("police_report")   # when something arrives
    if wait is not None:
        await ctx.end_wait(wait, by=event.event_id)         # resume

    @agent.on_wait_deadline("police_report")
    async def no_report(wait: OpenWait, ctx: HandlerContext) -> None:
        await ctx.emit(CaseEscalated, ...)                  # or run the compensation

A wait is a `case_waiting` event and a durable timer for its deadline; it ends with
`wait_ended` — "arrived" (the timer cancelled) or "deadline_passed" (the timer fired
first; the SDK records it before the agent's deadline handler runs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from contracts.envelope import Event
from contracts.events.case import CaseWaiting, WaitEnded

# The timer that ends a wait is named after what it waits for.
WAIT_TIMER_PREFIX = "wait_"
WAIT_PRODUCES = ("case_waiting", "wait_ended", "timer_set", "timer_fired", "timer_cancelled")


@dataclass(frozen=True)
class OpenWait:
    wait_id: str  # its case_waiting event
    waiting_for: str
    step: str
    until: datetime
    timer_id: str


def wait_timer(waiting_for: str) -> str:
    return WAIT_TIMER_PREFIX + waiting_for


def open_waits(events: Iterable[Event], agent_id: str) -> dict[str, OpenWait]:
    """The agent's waits that no `wait_ended` ended yet, by what they wait for (the
    latest, if it waited for one thing twice). Only the agent's own events count, and
    each wait once: a second copy of a `case_waiting` (replayed under a fresh message
    id) does not reopen the wait it began."""
    waits: dict[str, OpenWait] = {}
    seen: set[str] = set()  # wait ids begun: a copy of one (a replay) reopens nothing
    for event in events:
        if event.actor != agent_id:
            continue
        if isinstance(event, CaseWaiting):
            if event.event_id in seen:
                continue
            seen.add(event.event_id)
            waits[event.payload.waiting_for] = OpenWait(
                wait_id=event.event_id,
                waiting_for=event.payload.waiting_for,
                step=event.payload.step,
                until=event.payload.until,
                timer_id=event.payload.timer_id,
            )
        elif isinstance(event, WaitEnded):
            wait = waits.get(event.payload.waiting_for)
            if wait is not None and wait.wait_id == event.payload.wait_id:
                del waits[event.payload.waiting_for]
    return waits
